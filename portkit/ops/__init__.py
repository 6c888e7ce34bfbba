"""Fused operators: `import portkit.ops as ops`.

Every op is differentiable, a `torch.library.custom_op` (namespace "portkit") with a fake
(shape-only) implementation and a registered autograd formula, and dispatches through
`portkit.ops.registry` to the best implementation on the active backend (Triton on CUDA
and ROCm), else the torch reference. torch.compile traces through an op to that
implementation (its Triton kernels or torch ops land in inductor's graph).
`PORTKIT_OPS=reference` (or `set_mode("reference")`) forces the references. Importing this
package never imports triton.

Registry ops (forward and backward separate, so a plugin may replace either):
rms_norm_fwd/bwd, layer_norm_fwd/bwd, add_rms_norm_fwd, add_layer_norm_fwd, rms_norm_bwd_add,
layer_norm_bwd_add, bias_gelu_fwd/bwd, gelu_mlp_fwd/bwd, causal_attention_fwd/bwd, swiglu_fwd/bwd, rotary_fwd/bwd,
softmax_fwd/bwd, cross_entropy_chunk, linear_cross_entropy_fwd, adamw_step.
"""
from portkit.ops._op import launchable
from portkit.ops.registry import OpImpl, set_mode
from portkit.ops.norms import add_layer_norm, add_rms_norm, layer_norm, rms_norm
from portkit.ops.activations import bias_gelu, swiglu
from portkit.ops.mlp import gelu_mlp
from portkit.ops.attention import causal_attention, causal_attention_packed
from portkit.ops.rotary import rotary, rotary_tables
from portkit.ops.softmax import scaled_masked_softmax
from portkit.ops.cross_entropy import linear_cross_entropy
from portkit.ops.adamw import FusedAdamW

__all__ = ["OpImpl", "set_mode", "launchable", "rms_norm", "layer_norm", "add_rms_norm", "add_layer_norm", "bias_gelu", "swiglu", "gelu_mlp", "causal_attention", "causal_attention_packed", "rotary",
           "rotary_tables", "scaled_masked_softmax", "linear_cross_entropy", "FusedAdamW"]
