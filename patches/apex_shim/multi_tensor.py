"""apex.multi_tensor_apply.multi_tensor_applier and the amp_C functions Megatron-core uses.

Each amp_C function takes (chunk_size, noop_flag, tensor_lists, *args) as the CUDA
extension does; the chunk size is irrelevant to torch._foreach and ignored. noop_flag
(an int tensor of one element) is set to 1 when a checked input holds inf or NaN, as apex does.
"""
from __future__ import annotations

import torch

from portkit.patches._adam_kernels import adam_


class MultiTensorApply:
    available = True
    warned = False

    def __init__(self, chunk_size: int):
        self.chunk_size = chunk_size

    def __call__(self, op, noop_flag_buffer, tensor_lists, *args):
        return op(self.chunk_size, noop_flag_buffer, tensor_lists, *args)


multi_tensor_applier = MultiTensorApply(2048 * 32)


def _flag_nonfinite(noop_flag: torch.Tensor, tensors) -> None:
    if tensors and not all(torch.isfinite(t).all() for t in tensors):
        noop_flag.fill_(1)


@torch.no_grad()
def multi_tensor_scale(chunk_size, noop_flag, tensor_lists, scale):
    """out[i] = in[i] * scale, in out's dtype."""
    src, dst = tensor_lists
    _flag_nonfinite(noop_flag, src)
    for s, d in zip(src, dst):
        d.copy_(s.float() * scale)


@torch.no_grad()
def multi_tensor_l2norm(chunk_size, noop_flag, tensor_lists, per_tensor=False):
    """-> (global L2 norm (1,) fp32, per-tensor norms (n,) fp32 or an empty tensor)."""
    (tensors,) = tensor_lists
    if not tensors:
        empty = torch.zeros(0)
        return torch.zeros(1), empty
    norms = torch.stack(torch._foreach_norm([t.float() for t in tensors]))
    total = norms.norm(2).reshape(1)
    _flag_nonfinite(noop_flag, [total])
    return total, norms if per_tensor else norms.new_empty(0)


@torch.no_grad()
def multi_tensor_axpby(chunk_size, noop_flag, tensor_lists, a, b, arg_to_check):
    """out = a*x + b*y; arg_to_check 0 checks x, 1 checks y, -1 both."""
    xs, ys, outs = tensor_lists
    checked = {0: xs, 1: ys}.get(arg_to_check, list(xs) + list(ys))
    _flag_nonfinite(noop_flag, checked)
    for x, y, out in zip(xs, ys, outs):
        out.copy_(a * x.float() + b * y.float())


@torch.no_grad()
def multi_tensor_adam(chunk_size, noop_flag, tensor_lists, lr, beta1, beta2, epsilon, step, mode,
                      bias_correction, weight_decay):
    """tensor_lists = [grads, params, exp_avgs, exp_avg_sqs]; mode 0 = L2, 1 = AdamW."""
    g, p, m, v = tensor_lists
    adam_(g, p, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=epsilon, step=step, mode=mode,
          bias_correction=bool(bias_correction), weight_decay=weight_decay)


AMP_C = ["multi_tensor_scale", "multi_tensor_l2norm", "multi_tensor_axpby", "multi_tensor_adam"]
