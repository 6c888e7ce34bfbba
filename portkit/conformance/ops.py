"""Conformance group `ops`: the backend's fused-op implementations against the torch reference.

Two kinds of check:
- each OpImpl a plugin registers for this backend, called directly on the device on a few
  odd shapes (fp32, and bf16 when the backend has it), against the registry reference on
  the CPU; a forward and a backward are separate registry ops ("rms_norm_fwd", "_bwd").
- each public op of portkit.ops (forward and backward through autograd) on the device,
  as dispatch serves it, against the references on the CPU.
A failure names the op, the shape, the dtype and the error against the tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from portkit import runtime
from portkit.conformance.common import Check, Context, attempt, describe, missing, needs_active
from portkit.backend import Backend

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}  # max error / max |reference|


def _t(shape: tuple[int, ...], g: torch.Generator, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(shape, generator=g) * scale + shift


# -- inputs of each registry op, made on the CPU in fp32 from a seeded generator ----------
def _norm_rows(s, g):
    n, h = s
    return _t((n, h), g), _t((h,), g, 0.1, 1.0), _t((h,), g, 0.1)


def _rms_fwd(s, g):
    x, w, _ = _norm_rows(s, g)
    return x, w, 1e-6


def _rms_bwd(s, g):
    x, w, _ = _norm_rows(s, g)
    _, rstd = _ref("rms_norm_fwd")(x, w, 1e-6)
    return _t(x.shape, g), x, w, rstd


def _ln_fwd(s, g):
    x, w, b = _norm_rows(s, g)
    return x, w, b, 1e-5


def _ln_bwd(s, g):
    x, w, b = _norm_rows(s, g)
    _, mean, rstd = _ref("layer_norm_fwd")(x, w, b, 1e-5)
    return _t(x.shape, g), x, w, b, mean, rstd


def _add_rms_fwd(s, g):
    x, w, _ = _norm_rows(s, g)
    return x, _t(x.shape, g), w, 1e-6


def _add_ln_fwd(s, g):
    x, w, b = _norm_rows(s, g)
    return x, _t(x.shape, g), w, b, 1e-5


def _rms_bwd_add(s, g):
    return (*_rms_bwd(s, g), _t(s, g))


def _ln_bwd_add(s, g):
    return (*_ln_bwd(s, g), _t(s, g))


def _gelu_fwd(s, g):
    return _t(s, g), _t(s[-1:], g, 0.1)


def _gelu_bwd(s, g):
    return (_t(s, g),) + _gelu_fwd(s, g)


def _mlp_fwd(s, g):
    n, d = s
    return _t((n, d), g), _t((2 * d, d), g, d ** -0.5), _t((2 * d,), g, 0.1), _t((d, 2 * d), g, (2 * d) ** -0.5), _t((d,), g, 0.1)


def _mlp_bwd(s, g):
    x, w1, b1, w2, b2 = _mlp_fwd(s, g)
    _, z, h = _ref("gelu_mlp_fwd")(x, w1, b1, w2, b2)
    return _t((s[0], s[1]), g), x, z, h, w1, b1, w2, b2


def _attn_fwd(s, g):
    return _t(s, g), _t(s, g), _t(s, g), s[-1] ** -0.5


def _attn_bwd(s, g):
    q, k, v, scale = _attn_fwd(s, g)
    return (_t(s, g), q, k, v, *_ref("causal_attention_fwd")(q, k, v, scale), scale)


def _swiglu_fwd(s, g):
    return (_t((s[0], 2 * s[1]), g),)


def _swiglu_bwd(s, g):
    return _t(s, g), _t((s[0], 2 * s[1]), g)


def _tables(s):
    from portkit.ops.rotary import rotary_tables
    return rotary_tables(s[2], s[3])


def _rotary_fwd(s, g):
    return (_t(s, g), *_tables(s))


def _softmax_fwd(s, g):
    mask = torch.rand(s[0], 1, 1, s[3], generator=g) < 0.2
    return _t(s, g), mask, 0.125, True


def _softmax_bwd(s, g):
    y = _ref("softmax_fwd")(*_softmax_fwd(s, g))
    return _t(s, g), y, 0.125


def _ce_chunk(s, g):
    c, v = s
    target = torch.randint(0, v, (c,), generator=g)
    target[::5] = -100
    return _t((c, v), g, 3.0), target, -100, torch.tensor(1.0 / c)


def _lce_fwd(s, g):
    n, d, v = s
    target = torch.randint(0, v, (n,), generator=g)
    target[::4] = -100
    return _t((n, d), g), _t((v, d), g, 0.2), target, _t((v,), g, 0.1), -100, torch.tensor(1.0 / n)


def _adamw(s, g):
    params = [_t(shape, g) for shape in s]
    grads = [_t(shape, g, 0.1) for shape in s]
    exp_avgs = [_t(shape, g, 0.01) for shape in s]
    exp_avg_sqs = [_t(shape, g, 1e-3).square() for shape in s]
    return params, grads, exp_avgs, exp_avg_sqs, [None] * len(s), 3, 1e-2, 0.9, 0.999, 1e-8, 0.01


ROWS = ((3, 16), (37, 129), (64, 1024))
HEADS = ((1, 2, 7, 8), (2, 3, 33, 64))
TOKENS = ((1, 7, 2, 8), (2, 33, 3, 64))  # (B, T, H, D)
CASES: dict[str, tuple[Callable, tuple]] = {  # registry op -> (inputs(shape, generator), shapes)
    "rms_norm_fwd": (_rms_fwd, ROWS), "rms_norm_bwd": (_rms_bwd, ROWS),
    "layer_norm_fwd": (_ln_fwd, ROWS), "layer_norm_bwd": (_ln_bwd, ROWS),
    "add_rms_norm_fwd": (_add_rms_fwd, ROWS), "add_layer_norm_fwd": (_add_ln_fwd, ROWS),
    "rms_norm_bwd_add": (_rms_bwd_add, ROWS), "layer_norm_bwd_add": (_ln_bwd_add, ROWS),
    "bias_gelu_fwd": (_gelu_fwd, ROWS), "bias_gelu_bwd": (_gelu_bwd, ROWS),
    "gelu_mlp_fwd": (_mlp_fwd, ROWS), "gelu_mlp_bwd": (_mlp_bwd, ROWS),
    "causal_attention_fwd": (_attn_fwd, TOKENS), "causal_attention_bwd": (_attn_bwd, TOKENS),
    "swiglu_fwd": (_swiglu_fwd, ROWS), "swiglu_bwd": (_swiglu_bwd, ROWS),
    "rotary_fwd": (_rotary_fwd, HEADS), "rotary_bwd": (_rotary_fwd, HEADS),
    "softmax_fwd": (_softmax_fwd, HEADS), "softmax_bwd": (_softmax_bwd, HEADS),
    "cross_entropy_chunk": (_ce_chunk, ROWS), "linear_cross_entropy_fwd": (_lce_fwd, ((5, 16, 33), (37, 64, 300))),
    "adamw_step": (_adamw, (((7,), (33, 17), (1000,)),)),
}
KEEP_FP32 = {"rotary_fwd": (1, 2), "rotary_bwd": (1, 2), "cross_entropy_chunk": (3,), "causal_attention_bwd": (5,),
             "linear_cross_entropy_fwd": (5,), "adamw_step": (2, 3)}  # argument positions that stay fp32
MUTATED = {"cross_entropy_chunk": (0,), "adamw_step": (0, 2, 3, 4)}  # arguments an op writes in place: compared too


def _with_masters(args: list, dtype: torch.dtype) -> list:
    """bf16 params get fp32 master copies, as FusedAdamW keeps them."""
    if dtype != torch.float32:
        args[4] = [p.float() for p in args[0]]
    return args


ADJUST = {"adamw_step": _with_masters}


def _ref(op: str) -> Callable:
    from portkit.ops import registry
    return registry._references[op]  # the oracle the registry itself falls back to


# -- the group -----------------------------------------------------------------------------
def run(ctx: Context) -> list[Check]:
    blocked = needs_active(ctx)
    if blocked:
        return blocked
    try:
        import portkit.ops  # noqa: F401  (registers every reference)
    except ImportError as e:
        return missing(f"portkit.ops ({describe(e)})", "portkit.ops imports")
    impls, checks = registered_impls(ctx.backend)
    dtypes = [torch.float32] + ([torch.bfloat16] if ctx.backend.capabilities().bf16 else [])
    for plugin, impl in impls:
        checks.append(impl_check(ctx.backend, plugin, impl, dtypes))
    if not impls and not checks:
        checks.append(Check("fused ops registered for this backend", True,
                            "none registered: portkit's torch references serve every op"))
    checks += [public_check(ctx.backend, name) for name in PUBLIC]
    checks.append(attempt("portkit.ops.FusedAdamW two steps", lambda: compare_adamw(ctx.backend)))
    return checks


def registered_impls(b: Backend) -> tuple[list[tuple[str, Any]], list[Check]]:
    """(plugin, OpImpl) whose predicate holds for `b`, and failures met while collecting them."""
    from portkit.ops import registry
    p = runtime.plugins()
    before = len(p.errors)
    found, checks = [], []
    for plugin, impl in p.call_flat("portkit_register_ops"):
        if not isinstance(impl, registry.OpImpl):
            checks.append(Check(f"{plugin}: registered object", False, f"portkit_register_ops of plugin {plugin!r} "
                                f"returned {impl!r}; return portkit.ops.OpImpl entries"))
            continue
        ok = attempt("", lambda: None if impl.predicate(b) else "no")
        if ok.ok:
            found.append((plugin, impl))
        elif ok.reason != "no":
            checks.append(Check(f"{impl.name}: predicate", False, f"predicate of {impl.name!r} ({impl.op}) {ok.reason}"))
    for e in p.errors[before:]:
        checks.append(Check(f"{e.plugin}: portkit_register_ops", False, f"the hook failed: {e.reason}"))
    return found, checks


def impl_check(b: Backend, plugin: str, impl: Any, dtypes: list[torch.dtype]) -> Check:
    name = f"{impl.op} [{impl.name}]"
    if impl.op not in CASES:
        known = ", ".join(CASES)
        return Check(name, False, f"plugin {plugin!r} registers {impl.name!r} for op {impl.op!r}, which is not a "
                     f"portkit registry op (known: {known}); use one of those names and its reference's signature")
    make, shapes = CASES[impl.op]
    return attempt(name, lambda: compare_impl(b, impl, make, shapes, dtypes),
                   f"fix {impl.name!r} (it must match portkit's reference of {impl.op})")


def compare_impl(b: Backend, impl: Any, make: Callable, shapes: tuple, dtypes: list[torch.dtype]) -> str | None:
    for shape in shapes:
        for dtype in dtypes:
            args = cast(make(shape, torch.Generator().manual_seed(0)), dtype, KEEP_FP32.get(impl.op, ()))
            args = ADJUST.get(impl.op, lambda a, d: a)(args, dtype)
            mine = move(args, b.device())
            want = results(impl.op, _ref(impl.op)(*args), args)
            got = results(impl.op, impl.fn(*mine), mine)
            err = mismatch(got, want, TOLERANCE[dtype])
            if err:
                return f"op {impl.op} on shape {shape} {str(dtype).replace('torch.', '')}: {err}"
    return None


def cast(args: tuple, dtype: torch.dtype, keep: tuple) -> list:
    def one(a):
        if isinstance(a, list):
            return [one(x) for x in a]
        return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() else a
    return [a if i in keep else one(a) for i, a in enumerate(args)]


def move(args: list, device: torch.device) -> list:
    """Copies on the device (an op that writes its inputs must not touch the reference's)."""
    def one(a):
        if isinstance(a, list):
            return [one(x) for x in a]
        return a.to(device, copy=True) if isinstance(a, torch.Tensor) else a
    return [one(a) for a in args]


def results(op: str, out: Any, args: list) -> dict[str, Any]:
    """What an op produces, by label: its outputs, then the arguments it writes in place."""
    outs = () if out is None else tuple(out) if isinstance(out, (tuple, list)) else (out,)
    found = {(f"output {i}" if len(outs) > 1 else "output"): o for i, o in enumerate(outs)}
    for i in MUTATED.get(op, ()):
        items = args[i] if isinstance(args[i], list) else [args[i]]
        found.update({f"argument {i}" + (f"[{j}]" if isinstance(args[i], list) else "") + " (written in place)": t
                      for j, t in enumerate(items)})
    return found


def mismatch(got: Any, want: Any, tol: float) -> str | None:
    """None when `got` matches `want` (tensors, sequences or labelled dicts of them), else what differs."""
    gots, wants = _labelled(got), _labelled(want)
    if len(gots) != len(wants):
        return f"returned {len(gots)} outputs, the reference returns {len(wants)}"
    for (label, g), w in zip(gots.items(), wants.values()):
        if g is None and w is None:
            continue
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype:
            desc = f"{tuple(g.shape)} {g.dtype}" if isinstance(g, torch.Tensor) else type(g).__name__
            return f"{label} is {desc}, the reference gives {tuple(w.shape)} {w.dtype}"
        if w.numel() == 0:
            continue
        err = (g.detach().float().cpu() - w.float()).abs().max().item()
        scale = max(w.float().abs().max().item(), 1e-6)
        if not err <= tol * scale:  # also catches NaN
            return f"{label} max abs error {err:.3g} (reference max {scale:.3g}, tolerance {tol * scale:.3g})"
    return None


def _labelled(x: Any) -> dict[str, Any]:
    if isinstance(x, dict):
        return x
    items = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return {(f"output {i}" if len(items) > 1 else "output"): t for i, t in enumerate(items)}


# -- the public ops, forward and backward, as dispatch serves them on the device -----------
def _pub_rms(g):
    return (_t((2, 5, 96), g), _t((96,), g, 0.1, 1.0)), {"eps": 1e-6}


def _pub_ln(g):
    return (_t((2, 5, 96), g), _t((96,), g, 0.1, 1.0), _t((96,), g, 0.1)), {"eps": 1e-5}


def _pub_gelu(g):
    return (_t((2, 5, 96), g), _t((96,), g, 0.1)), {}


def _pub_swiglu(g):
    return (_t((2, 5, 192), g),), {}


def _pub_rotary(g):
    s = (2, 3, 9, 16)
    return (_t(s, g), *_tables(s)), {}


def _pub_softmax(g):
    return (_t((2, 3, 9, 9), g), None, 0.25), {"causal": True}


def _pub_lce(g):
    target = torch.randint(0, 50, (10,), generator=g)
    target[3] = -100
    return (_t((10, 32), g), _t((50, 32), g, 0.2), target), {"bias": None, "ignore_index": -100}


PUBLIC: dict[str, Callable] = {"rms_norm": _pub_rms, "layer_norm": _pub_ln, "bias_gelu": _pub_gelu,
                               "swiglu": _pub_swiglu, "rotary": _pub_rotary, "scaled_masked_softmax": _pub_softmax,
                               "linear_cross_entropy": _pub_lce}
NO_GRAD = {"rotary": (1, 2)}  # tables get no gradient


@dataclass
class _Run:
    out: torch.Tensor
    grads: list[torch.Tensor]


def public_check(b: Backend, name: str) -> Check:
    import portkit.ops as ops
    label = f"portkit.ops.{name} forward+backward"
    if not hasattr(ops, name):
        return Check(label, False, f"missing: portkit.ops.{name}")
    return attempt(label, lambda: compare_public(b, name, getattr(ops, name)))


def compare_public(b: Backend, name: str, fn: Callable) -> str | None:
    from portkit.ops import registry
    from portkit.ops._op import fused_eager
    args, kwargs = PUBLIC[name](torch.Generator().manual_seed(0))
    dy = _t(tuple(fn(*args, **kwargs).shape), torch.Generator().manual_seed(1))
    registry.set_mode("reference")
    try:
        want = run_public(fn, args, kwargs, dy, torch.device("cpu"), NO_GRAD.get(name, ()))
    finally:
        registry.set_mode(None)
    with fused_eager():  # the backend's kernels at these small shapes, not torch's ops
        got = run_public(fn, args, kwargs, dy, b.device(), NO_GRAD.get(name, ()))
    err = mismatch(got.out, want.out, TOLERANCE[torch.float32])
    if err:
        return f"op {name} forward on {b.device()}: {err}"
    for i, (g, w) in enumerate(zip(got.grads, want.grads)):
        err = mismatch(g, w, TOLERANCE[torch.float32])
        if err:
            return f"op {name} backward, gradient of argument {i} on {b.device()}: {err}"
    return None


def run_public(fn: Callable, args: tuple, kwargs: dict, dy: torch.Tensor, device: torch.device,
               no_grad: tuple) -> _Run:
    # detach + copy: a fresh leaf on every device (on the CPU .to() would return `a` itself)
    leaves = [a.detach().to(device, copy=True).requires_grad_(i not in no_grad) if isinstance(a, torch.Tensor) and a.is_floating_point()
              else (a.to(device) if isinstance(a, torch.Tensor) else a) for i, a in enumerate(args)]
    out = fn(*leaves, **kwargs)
    out.backward(dy.to(device))
    grads = [a.grad for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
    return _Run(out.detach(), grads)


def compare_adamw(b: Backend) -> str | None:
    """FusedAdamW on the device against torch.optim.AdamW on the CPU, two steps."""
    from portkit.ops import FusedAdamW
    g = torch.Generator().manual_seed(0)
    shapes = ((33, 17), (1000,))
    start = [_t(s, g) for s in shapes]
    grads = [[_t(s, g, 0.1) for s in shapes] for _ in range(2)]
    want = [p.clone().requires_grad_() for p in start]
    got = [p.to(b.device(), copy=True).requires_grad_() for p in start]
    pairs = ((torch.optim.AdamW(want, lr=1e-2, weight_decay=0.01), want, torch.device("cpu")),
             (FusedAdamW(got, lr=1e-2, weight_decay=0.01), got, b.device()))
    for step in grads:
        for opt, params, device in pairs:
            for p, grad in zip(params, step):
                p.grad = grad.to(device, copy=True)
            opt.step()
    err = mismatch([p.detach() for p in got], [p.detach() for p in want], TOLERANCE[torch.float32])
    return f"FusedAdamW on {b.device()} after 2 steps: {err}" if err else None
