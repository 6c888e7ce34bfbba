"""Adam in the calling conventions of the compiled ops DeepSpeed and Colossal-AI load.

Both frameworks ship apex-style CUDA/C++ Adam kernels and import them through their op
loaders. Where the compiled op is missing, the adapters hand out the modules below instead.
The arithmetic is apex's `multi_tensor_adam`. Its common case (decoupled weight decay, bias
correction, fp32 moments) is portkit's fused op "adamw_step" (Triton on CUDA/ROCm, the
torch reference elsewhere); the other variants (L2 mode, no bias correction, moments in
bf16/fp16, a loss-scale divisor) run here in fp32 with `torch._foreach_*` calls and are
written back in each tensor's own dtype.
"""
from __future__ import annotations

import types

import torch

ADAM_MODE_L2, ADAM_MODE_DECOUPLED = 0, 1  # apex: 0 = L2 added to the gradient, 1 = AdamW


def adam_(grads, params, exp_avgs, exp_avg_sqs, *, lr: float, beta1: float, beta2: float, eps: float,
          step: int, mode: int, bias_correction: bool, weight_decay: float, div_scale: float = -1.0) -> None:
    """One Adam step over lists of tensors, in place on params, exp_avgs and exp_avg_sqs."""
    if not params:
        return
    if _is_adamw(mode, bias_correction, div_scale, exp_avgs, exp_avg_sqs):
        return _portkit_adamw(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=lr, beta1=beta1,
                              beta2=beta2, eps=eps, weight_decay=weight_decay)
    g, p, m, v = ([t.float() for t in ts] for ts in (grads, params, exp_avgs, exp_avg_sqs))
    if div_scale > 0:
        g = torch._foreach_div(g, div_scale)
    if mode == ADAM_MODE_L2 and weight_decay != 0:
        g = torch._foreach_add(g, p, alpha=weight_decay)
    torch._foreach_lerp_(m, g, 1 - beta1)                     # m = b1 m + (1-b1) g
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, g, g, value=1 - beta2)         # v = b2 v + (1-b2) g^2
    bc1 = 1 - beta1 ** step if bias_correction else 1.0
    bc2 = 1 - beta2 ** step if bias_correction else 1.0
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bc2 ** 0.5)
    torch._foreach_add_(denom, eps)                           # sqrt(v_hat) + eps
    if mode == ADAM_MODE_DECOUPLED and weight_decay != 0:
        torch._foreach_mul_(p, 1 - lr * weight_decay)
    torch._foreach_addcdiv_(p, m, denom, value=-lr / bc1)
    for src, dst in zip((p, m, v), (params, exp_avgs, exp_avg_sqs)):
        for s, d in zip(src, dst):
            if s is not d:
                d.copy_(s)


def _is_adamw(mode, bias_correction, div_scale, exp_avgs, exp_avg_sqs) -> bool:
    """Is this step exactly portkit's "adamw_step" (which keeps fp32 moments)?"""
    fp32 = all(t.dtype == torch.float32 for t in (*exp_avgs, *exp_avg_sqs))
    return mode == ADAM_MODE_DECOUPLED and bool(bias_correction) and div_scale <= 0 and fp32


def _portkit_adamw(params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1, beta2, eps, weight_decay) -> None:
    from portkit.ops._op import pick
    from portkit.ops.adamw import adamw_step
    fn = pick("adamw_step", adamw_step, params[0])
    fn(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), [None] * len(params), int(step),
       lr, beta1, beta2, eps, weight_decay)


@torch.no_grad()
def multi_tensor_adam(chunk_size, noop_flag, tensor_lists, lr, beta1, beta2, eps, step, mode,
                      bias_correction, weight_decay, div_scale=-1.0):
    """apex/DeepSpeed/Colossal-AI `fused_adam.multi_tensor_adam`: tensor_lists = [g, p, m, v]."""
    g, p, m, v = tensor_lists
    adam_(g, p, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps, step=step, mode=mode,
          bias_correction=bool(bias_correction), weight_decay=weight_decay, div_scale=div_scale)


@torch.no_grad()
def multi_tensor_scale(chunk_size, noop_flag, tensor_lists, scale):
    """apex `multi_tensor_scale`: out[i] = in[i] * scale."""
    src, dst = tensor_lists
    for s, d in zip(src, dst):
        d.copy_(s.float() * scale)


@torch.no_grad()
def multi_tensor_l2norm(chunk_size, noop_flag, tensor_lists, per_tensor=False):
    """apex `multi_tensor_l2norm`: (global norm, per-tensor norms or an empty tensor)."""
    (tensors,) = tensor_lists
    norms = torch.stack([t.float().norm(2) for t in tensors]) if tensors else torch.zeros(0)
    total = norms.norm(2) if tensors else torch.zeros(())
    return total.reshape(1), norms if per_tensor else torch.zeros(0, device=total.device)


def fused_optim_module(name: str) -> types.ModuleType:
    """A stand-in for a compiled `fused_adam` / `fused_optim` extension module."""
    mod = types.ModuleType(name, f"portkit stand-in for the compiled {name} op")
    mod.multi_tensor_adam = multi_tensor_adam
    mod.multi_tensor_scale = multi_tensor_scale
    mod.multi_tensor_l2norm = multi_tensor_l2norm
    mod.portkit = True
    return mod


class DeepSpeedCPUAdamOps:
    """DeepSpeed's `cpu_adam` op: create_adam / adam_update / destroy_adam by optimizer id."""

    def __init__(self) -> None:
        self.modes: dict[int, int] = {}  # optimizer id -> adam mode (the rest comes with each update)

    def create_adam(self, opt_id, lr, beta1, beta2, eps, weight_decay, adamw_mode, should_log=False):
        self.modes[opt_id] = ADAM_MODE_DECOUPLED if adamw_mode else ADAM_MODE_L2
        return 0

    @torch.no_grad()
    def adam_update(self, opt_id, step, lr, beta1, beta2, eps, weight_decay, bias_correction, params,
                    grads, exp_avg, exp_avg_sq):
        mode = self.modes[opt_id]
        adam_([grads], [params], [exp_avg], [exp_avg_sq], lr=lr, beta1=beta1, beta2=beta2, eps=eps,
              step=step, mode=mode, bias_correction=bool(bias_correction), weight_decay=weight_decay)
        return 0

    def adam_rollback(self, *args, **kwargs):
        raise NotImplementedError("adam_rollback (DeepSpeed SuperOffload/ZenFlow) has no portkit implementation; "
                                  "build DeepSpeed's cpu_adam op (DS_BUILD_CPU_ADAM=1) to use it")

    def destroy_adam(self, opt_id):
        self.modes.pop(opt_id, None)
        return 0


class ColossalCPUAdamOptimizer:
    """Colossal-AI's compiled `cpu_adam.CPUAdamOptimizer(lr, beta1, beta2, eps, wd, adamw_mode)`."""

    def __init__(self, lr, beta1, beta2, eps, weight_decay, adamw_mode):
        self.mode = ADAM_MODE_DECOUPLED if adamw_mode else ADAM_MODE_L2

    @torch.no_grad()
    def step(self, step, lr, beta1, beta2, eps, weight_decay, bias_correction, params, grads, exp_avg,
             exp_avg_sq, div_scale=-1.0):
        adam_([grads], [params], [exp_avg], [exp_avg_sq], lr=lr, beta1=beta1, beta2=beta2, eps=eps,
              step=step, mode=self.mode, bias_correction=bool(bias_correction), weight_decay=weight_decay,
              div_scale=div_scale)
