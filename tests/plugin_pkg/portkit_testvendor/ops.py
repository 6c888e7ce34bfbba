"""testvendor's fused ops, registered through the entry-point group `portkit.ops`: one
package may register in several groups, each naming the module that holds that kind."""
import torch

from portkit import hookimpl


def rms_norm_fwd(x, weight, eps):
    """The plain-torch RMSNorm forward, standing in for a vendor kernel: y in x.dtype, rstd fp32."""
    xf = x.float()
    rstd = torch.rsqrt(xf.square().mean(-1) + eps)
    y = xf * rstd[:, None] * (weight.float() if weight is not None else 1.0)
    return y.to(x.dtype), rstd


@hookimpl
def portkit_register_ops():
    from portkit.ops.registry import OpImpl
    return [OpImpl(op="rms_norm_fwd", fn=rms_norm_fwd, predicate=lambda backend: backend.name == "testvendor",
                   priority=10, name="testvendor.rms_norm_fwd")]
