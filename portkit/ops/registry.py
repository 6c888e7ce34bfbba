"""Op registry: op name -> implementations by priority, each with where it runs.

Dispatch takes the highest-priority implementation whose predicate holds on the active
backend, else the torch reference, which is always present and is the numerical oracle.
`PORTKIT_OPS=reference` forces the references everywhere (A/B runs); a recipe sets the
same through `set_mode`. `PORTKIT_OPS=<implementation name>` (e.g. triton, aten) prefers
that implementation wherever an op has one that runs: an A/B of two kernels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from portkit import runtime
from portkit.backend import Backend

MODE_ENV = "PORTKIT_OPS"
MODES = ("auto", "reference")


@dataclass(frozen=True)
class OpImpl:
    op: str
    fn: Callable
    predicate: Callable[[Backend], bool]  # does this implementation run on that backend?
    priority: int = 0
    name: str = "custom"


_references: dict[str, Callable] = {}
_unserved: dict[str, str] = {}  # op -> what its public function calls where nothing serves it
_impls: dict[str, list[OpImpl]] = {}
_cache: dict[tuple[str, str], Callable] = {}
_plugins_loaded = False
_mode: str | None = None


def reference(op: str, unserved: str = "reference"):
    """Decorator: the torch reference of `op` (one per op). `unserved` names what the public
    function calls where no implementation serves `op`, when that is not this reference (doctor
    shows it as the op's selection)."""
    def wrap(fn: Callable) -> Callable:
        if op in _references:
            raise ValueError(f"op {op!r} already has a reference: {_references[op].__qualname__}")
        _references[op], _unserved[op] = fn, unserved
        return fn
    return wrap


def register(impl: OpImpl) -> None:
    if impl.op not in _references:
        raise ValueError(f"cannot register {impl.name!r} for unknown op {impl.op!r}; "
                         f"known ops: {', '.join(sorted(_references))}")
    clash = [i for i in _impls.get(impl.op, []) if i.name == impl.name]
    if clash:
        raise ValueError(f"op {impl.op!r} already has an implementation named {impl.name!r}; rename one")
    _impls.setdefault(impl.op, []).append(impl)
    _impls[impl.op].sort(key=lambda i: -i.priority)
    _cache.clear()


def _known_modes() -> list[str]:
    _load_plugin_ops()
    return list(MODES) + sorted({i.name for impls in _impls.values() for i in impls})


def set_mode(mode: str | None) -> None:
    if mode is not None and mode not in MODES and mode not in _known_modes():
        raise ValueError(f"ops mode {mode!r} is not one of {', '.join(_known_modes())}")
    global _mode
    _mode = mode
    _cache.clear()


def _raw_mode() -> str:
    return _mode or os.environ.get(MODE_ENV, "auto")


def mode() -> str:
    m = _raw_mode()
    if m not in MODES and m not in _known_modes():
        raise ValueError(f"{MODE_ENV}={m!r} is not one of {', '.join(_known_modes())}")
    return m


def _load_plugin_ops() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for _, impl in runtime.plugins().call_flat("portkit_register_ops"):
            register(impl)


def choose(op: str, backend: Backend | None = None) -> OpImpl | None:
    """The implementation dispatch would take on `backend` (None means the reference)."""
    _load_plugin_ops()
    if op not in _references:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(sorted(_references))}")
    m = mode()
    if m == "reference":
        return None
    backend = backend or runtime.active()
    runs = [i for i in _impls.get(op, []) if i.predicate(backend)]
    preferred = [i for i in runs if i.name == m]
    return (preferred or runs or [None])[0]


def implementations(op: str) -> list[OpImpl]:
    """The registered implementations of `op`, highest priority first (the reference not included)."""
    _load_plugin_ops()
    return list(_impls.get(op, []))


def dispatch(op: str) -> Callable:
    """The callable for `op` on the active backend, cached per (op, backend)."""
    key = (op, runtime.active().name, _raw_mode())  # the mode is validated on a miss, in choose()
    fn = _cache.get(key)
    if fn is None:
        impl = choose(op)
        fn = _cache[key] = impl.fn if impl else _references[op]
    return fn


def serves(op: str) -> bool:
    """Whether an implementation other than the torch reference serves `op` here."""
    return dispatch(op) is not _references[op]


def table(backend: Backend | None = None) -> list[dict]:
    """For `portkit doctor`: each op, its implementations and which one dispatch picks."""
    rows = []
    for op in sorted(_references):
        chosen = choose(op, backend)
        rows.append({"op": op, "implementations": [i.name for i in _impls.get(op, [])] + ["reference"],
                     "selected": chosen.name if chosen else _unserved[op]})
    return rows
