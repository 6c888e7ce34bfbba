"""apex.optimizers: FusedAdam and FusedSGD with apex's constructors.

FusedAdam: adam_w_mode=True is torch.optim.AdamW and runs portkit's fused "adamw_step" op
(the one behind portkit.ops.FusedAdamW: one Triton launch per group on CUDA/ROCm);
adam_w_mode=False (torch.optim.Adam with L2 weight decay) and bias_correction=False run
apex's multi-tensor Adam arithmetic (portkit.patches._adam_kernels.adam_, torch._foreach).
Both compute in fp32 and write back in the param's dtype; m and v are kept in fp32.
FusedSGD is torch.optim.SGD with foreach updates. What apex offers and these do not
(master_weights, capturable, wd_after_momentum) raises NotImplementedError naming it.
"""
from __future__ import annotations

import torch

import portkit.ops  # noqa: F401  (registers the "adamw_step" op)
from portkit.ops import registry
from portkit.ops.adamw import GroupStepOptimizer
from portkit.patches._adam_kernels import ADAM_MODE_DECOUPLED, ADAM_MODE_L2, adam_


class FusedAdam(GroupStepOptimizer):
    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8,
                 adam_w_mode=True, weight_decay=0.0, amsgrad=False, set_grad_none=True,
                 capturable=False, master_weights=False):
        if amsgrad:
            raise RuntimeError("FusedAdam does not support the AMSGrad variant.")
        if capturable or master_weights:
            raise NotImplementedError("apex FusedAdam(capturable=True / master_weights=True) is not served by "
                                      "portkit's apex shim; use portkit.ops.FusedAdamW(master_weights=True)")
        defaults = dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.adam_w_mode = 1 if adam_w_mode else 0
        self.set_grad_none = set_grad_none

    def zero_grad(self, set_to_none: bool | None = None):
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

    def step(self, closure=None, grads=None, output_params=None, scale=None, grad_norms=None, grad_scaler=None):
        if any(a is not None for a in (grads, output_params, scale, grad_norms)):
            raise RuntimeError("FusedAdam has been updated. Simply initialize it identically to torch.optim.Adam, "
                               "and call step() with no arguments.")
        return super().step(closure)

    def _step_group(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("FusedAdam does not support sparse gradients, please consider SparseAdam instead")
        group["step"] = step = group.get("step", 0) + 1
        for p in params:
            if not self.state[p]:
                self.state[p]["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                self.state[p]["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        (beta1, beta2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
        if self.adam_w_mode and group["bias_correction"]:
            registry.dispatch("adamw_step")(params, grads, m, v, [None] * len(params), step, lr, beta1, beta2, eps, wd)
            return
        adam_(grads, params, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps, step=step,
              mode=ADAM_MODE_DECOUPLED if self.adam_w_mode else ADAM_MODE_L2,
              bias_correction=bool(group["bias_correction"]), weight_decay=wd)


class FusedSGD(torch.optim.SGD):
    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 wd_after_momentum=False, materialize_master_grads=True, set_grad_none=False):
        if wd_after_momentum:
            raise NotImplementedError("apex FusedSGD(wd_after_momentum=True) is not served by portkit's apex shim")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, foreach=True)
        self.set_grad_none = set_grad_none

    def zero_grad(self, set_to_none: bool | None = None):
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)
