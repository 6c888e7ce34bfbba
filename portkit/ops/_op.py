"""Helpers shared by the op modules: which implementation serves a tensor, row views, and
the pairing of each custom op (for torch.compile) with an autograd.Function (for eager)."""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
from typing import Callable

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

from portkit import runtime
from portkit.ops import registry


@functools.lru_cache(maxsize=None)
def say_once(line: str) -> None:
    """`line` on stderr the first time it comes: an implementation that hands a call to its
    reference says why once, not on every call."""
    print(line, file=sys.stderr)


def pick(op: str, reference: Callable, t: Tensor) -> Callable:
    """The implementation for tensors on `t`'s device.

    Registered implementations are chosen for the active backend's device; tensors on
    another device (CPU tensors while a GPU backend is active) run the torch reference.
    """
    if t.device.type != runtime.active().device_type:
        return reference
    return registry.dispatch(op)


def served_device(op: str) -> Callable[[], str | None]:
    """A function giving the active backend's device type where an implementation other than
    the reference serves `op`, else None. torch.compile runs it once while tracing (choosing
    may load plugins and libraries, which it cannot trace) and keeps the answer: set
    PORTKIT_OPS before compiling. Marked as torch.compiler.assume_constant_result marks, without
    importing torch._dynamo (and triton) with portkit.ops; the ops' tests check that the GPT
    still compiles in one graph."""
    def device() -> str | None:
        return runtime.active().device_type if registry.serves(op) else None
    device._dynamo_marked_constant = True
    return device


# An eager call that records autograd on an activation smaller than this takes torch's own
# C++ ops where torch has them (eager_native): a Python autograd node and its Triton launches
# cost 0.3-0.5 ms of host time a fwd+bwd on the H200 machine's host against 0.18 ms for
# F.layer_norm, more than the fused kernel saves on the device at these sizes, and an eager
# step of a small model is host-bound (docs/benchmarks.md). At 16384 x 2048 bf16 (a 1.3B
# GPT's activations) and above the fused kernels stay: such steps are device-bound.
EAGER_FUSED_BYTES = 64 << 20


def eager_native(op: str, x: Tensor, *params: Tensor | None) -> bool:
    """Whether this call should run as torch's own ops rather than through `op`'s fused
    kernels: eager, recording autograd, x under EAGER_FUSED_BYTES, params of x's dtype, and
    an implementation other than the reference serving `op` on x's device (the CPU keeps the
    reference path, which is the one the tests check)."""
    return (not torch.compiler.is_compiling() and torch.is_grad_enabled()
            and x.numel() * x.element_size() < EAGER_FUSED_BYTES
            and any(t is not None and t.requires_grad for t in (x, *params))
            and all(t is None or t.dtype == x.dtype for t in params)
            and x.device.type == runtime.active().device_type and registry.serves(op))


@contextlib.contextmanager
def fused_eager():
    """Inside, eager autograd calls of every size take the fused implementations: conformance
    certifies a plugin's kernels through the public ops, not torch's."""
    global EAGER_FUSED_BYTES
    before, EAGER_FUSED_BYTES = EAGER_FUSED_BYTES, 0
    try:
        yield
    finally:
        EAGER_FUSED_BYTES = before


def as_rows(x: Tensor) -> Tensor:
    """(..., H) -> contiguous (N, H)."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def n_rows(x: Tensor) -> int:
    return x.numel() // x.shape[-1]


def check_vector(name: str, v: Tensor | None, size: int, op: str) -> None:
    if v is not None and tuple(v.shape) != (size,):
        raise ValueError(f"{op}: {name} has shape {tuple(v.shape)}, expected ({size},) "
                         f"to match the last dimension of x")


def check_residual(x: Tensor, residual: Tensor | None, op: str) -> None:
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"{op}: residual is {residual.dtype} {tuple(residual.shape)}, expected "
                         f"{x.dtype} {tuple(x.shape)} like x")


# -- custom op for torch.compile, autograd.Function for eager -------------------------------
_trace = threading.local()


def tracing_body() -> bool:
    """True while torch.compile traces an op's body: Triton launchers then hand their
    kernels to torch.library.wrap_triton so inductor launches them from its own code."""
    return getattr(_trace, "on", False)


def launchable(kernel):
    """A Triton kernel ready for `[grid](...)`: itself, or while torch.compile traces an op's
    body the torch.library.wrap_triton wrapper that puts it into inductor's graph. Every
    launcher of a kernel that an op's body may run calls it through this. Inside
    `recording(fn)` it is `fn(kernel)`: the cross-compile check records launches this way."""
    record = getattr(_trace, "record", None)
    if record is not None:
        return record(kernel)
    return torch.library.wrap_triton(kernel) if tracing_body() else kernel


@contextlib.contextmanager
def recording(record: Callable):
    """Launchers called inside hand their kernels to `record` instead of launching them."""
    before, _trace.record = getattr(_trace, "record", None), record
    try:
        yield
    finally:
        _trace.record = before


def custom_op(name: str, traced: bool = True) -> Callable:
    """torch.library.custom_op (nothing mutated) that keeps its plain body as `.body`.

    With `traced`, torch.compile traces through the body (the rule torch.library.triton_op
    installs, without its import of triton): the chosen implementation's torch ops and
    Triton kernels land in inductor's graph, so no dispatcher or Python runs per call in
    compiled code. An implementation must then be traceable: torch ops, or Triton kernels
    launched through `launchable`. torch.export keeps the op whole.
    """
    def wrap(fn: Callable):
        op = torch.library.custom_op(name, mutates_args=())(fn)
        op.body = fn
        if traced:
            op.register_torch_dispatch(FunctionalTensorMode, _traced_body(fn))
        return op
    return wrap


def _traced_body(fn: Callable) -> Callable:
    def decompose(mode, func, types, args, kwargs):
        if _export_keeps_ops():
            return mode.__torch_dispatch__(func, types, args, kwargs)  # stays one opaque op
        if any(not issubclass(t, FakeTensor) and t not in (Tensor, FunctionalTensor) for t in types):
            return NotImplemented  # a tensor subclass (DTensor, ...) handles the op itself
        before, _trace.on = tracing_body(), True
        try:
            with mode:
                return fn(*args, **kwargs)
        finally:
            _trace.on = before
    return decompose


def _export_keeps_ops() -> bool:
    from torch.export._trace import custom_triton_ops_decomposition_disabled
    return custom_triton_ops_decomposition_disabled()


def call(ctx, op) -> Callable:
    """Inside a backward: the backward custom op when traced, its plain body when eager."""
    return op.body if getattr(ctx, "eager", False) else op


def with_autograd(op, backward: Callable, setup_context: Callable) -> Callable:
    """Register `op`'s autograd formula and return the function callers use.

    A Python custom op costs tens of microseconds of dispatcher work a call, forward and
    backward, which is as long as a norm kernel on an H100 and left the GPU idle in eager
    runs. Eager calls therefore go through an autograd.Function over the same bodies and the
    same formula; under torch.compile the custom op stays, opaque to the tracer.
    """
    op.register_autograd(backward, setup_context=setup_context)

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):  # the ctx-style forward: a separate setup_context makes
            out = op.body(*args)  # every apply() bind its arguments through inspect (~10 us)
            ctx.eager = True
            ctx.set_materialize_grads(False)  # the auxiliary outputs (rstd, mean) get no zeros
            setup_context(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    def run(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return Eager.apply(*args) if torch.is_grad_enabled() else op.body(*args)
    return run
