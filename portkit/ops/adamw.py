"""FusedAdamW: AdamW with decoupled weight decay (as torch.optim.AdamW) and fp32 master
weights for bf16/fp16 params.

The update is the registry op "adamw_step"; its implementations take lists of tensors:
(params, grads, exp_avgs, exp_avg_sqs, masters, step, lr, beta1, beta2, eps, weight_decay)
where masters[i] is the fp32 master copy of params[i] or None (the param is updated in
place). exp_avgs/exp_avg_sqs are fp32. The reference uses torch._foreach_* ops; the Triton
implementation updates every tensor of a group in one launch.
Traffic per parameter (fp32 params): reads p, g, m, v and writes p, m, v: 28 bytes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import pick

LOW_PRECISION = (torch.bfloat16, torch.float16)
FP32_STATE = ("exp_avg", "exp_avg_sq", "master")


@registry.reference("adamw_step")
def adamw_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               masters: list[Optional[Tensor]], step: int, lr: float, beta1: float, beta2: float,
               eps: float, weight_decay: float) -> None:
    """One AdamW step in place, the same arithmetic as torch.optim.AdamW(foreach=True)."""
    work = [m if m is not None else (p if p.dtype == torch.float32 else p.float())
            for p, m in zip(params, masters)]
    g32 = [g if g.dtype == torch.float32 else g.float() for g in grads]
    torch._foreach_mul_(work, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, g32, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, g32, g32, 1 - beta2)
    step_size = lr / (1 - beta1 ** step)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(1 - beta2 ** step))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(work, exp_avgs, denom, -step_size)
    for p, w in zip(params, work):
        if w is not p:
            p.copy_(w)


class GroupStepOptimizer(torch.optim.Optimizer):
    """An optimizer whose step runs the closure as torch's do, then `_step_group` on each group."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        raise NotImplementedError


class FusedAdamW(GroupStepOptimizer):
    """AdamW (decoupled weight decay, as torch.optim.AdamW) in one fused step.

    master_weights: keep fp32 master copies of bf16/fp16 params (None: on when any param is
    bf16/fp16). m and v are always fp32.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, master_weights: Optional[bool] = None):
        _check_hparams(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        if master_weights is None:
            master_weights = any(p.dtype in LOW_PRECISION for g in self.param_groups for p in g["params"])
        self.master_weights = bool(master_weights)

    def _state(self, p: Tensor) -> dict:
        st = self.state[p]
        if not st:
            st["step"] = torch.tensor(0.0)
            st["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            if self.master_weights and p.dtype in LOW_PRECISION:
                st["master"] = p.detach().float()
        return st

    def _step_group(self, group: dict) -> None:
        by_step: dict[int, list[Tensor]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("FusedAdamW does not support sparse gradients; use torch.optim.SparseAdam")
            st = self._state(p)
            st["step"] += 1
            by_step.setdefault(int(st["step"].item()), []).append(p)
        beta1, beta2 = group["betas"]
        for step, params in by_step.items():
            states = [self.state[p] for p in params]
            fn = pick("adamw_step", adamw_step, params[0])
            fn(params, [p.grad for p in params], [s["exp_avg"] for s in states],
               [s["exp_avg_sq"] for s in states], [s.get("master") for s in states], step,
               group["lr"], beta1, beta2, group["eps"], group["weight_decay"])

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but m, v and master weights stay fp32 (torch would cast them to the
        param dtype)."""
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            for key in FP32_STATE:
                if i in saved and key in saved[i]:
                    self.state[p][key] = saved[i][key].to(device=p.device, dtype=torch.float32).clone()


def _check_hparams(lr: float, betas, eps: float, weight_decay: float) -> None:
    if lr < 0:
        raise ValueError(f"FusedAdamW: lr={lr} must be >= 0")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"FusedAdamW: betas={betas} must be two numbers in [0, 1)")
    if eps < 0 or weight_decay < 0:
        raise ValueError(f"FusedAdamW: eps={eps} and weight_decay={weight_decay} must be >= 0")
