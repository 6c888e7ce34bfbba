"""Conformance group `contract`: every member of portkit.Backend present and typed, device calls that work."""
from __future__ import annotations

import json
import re
import types
import typing

import torch

from portkit.conformance.common import Check, Context, attempt
from portkit.backend import Backend, Capabilities

# What every backend must define itself (inheriting portkit.Backend's value is a silent fallback).
REQUIRED = {
    "name": "set name = '<your backend>' as a class attribute (a lowercase identifier)",
    "device_type": "set device_type = '<torch device type>' as a class attribute (e.g. 'npu'; 'cuda' for ROCm/DCU)",
    "dist_backend": "set dist_backend = '<torch.distributed backend>' as a class attribute (nccl, hccl, cncl, gloo ...)",
    "probe": "define probe(self) -> str | None: None when the device is usable here, else why not",
}
STATS_KEYS = ("allocated", "peak_allocated", "reserved", "total")
ENV_RE = re.compile(r"[A-Z_][A-Z0-9_]*")


def run(ctx: Context) -> list[Check]:
    b = ctx.backend
    checks = [defined_check(b, m) for m in REQUIRED]
    checks += [attribute_check(b, n, tp) for n, tp in class_attributes().items()]
    checks += [method_check(b, n) for n in methods()]
    probe = attempt("probe() returns None or a reason", lambda: probe_result(b),
                    "probe() must return None (usable) or a str (why not), and be cheap")
    checks.append(probe)
    if probe.ok:
        checks += behaviour_checks(b)
    return checks


# -- presence and types ------------------------------------------------------------------
def class_attributes() -> dict[str, typing.Any]:
    """Name -> type of every ClassVar of the contract."""
    hints = typing.get_type_hints(Backend)
    return {n: typing.get_args(tp)[0] for n, tp in hints.items() if typing.get_origin(tp) is typing.ClassVar}


def methods() -> list[str]:
    return [n for n, v in vars(Backend).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))]


def defined_check(b: Backend, member: str) -> Check:
    owner = next((c for c in type(b).__mro__ if member in vars(c)), None)
    if owner is not None and owner is not Backend:
        return Check(f"{member} defined", True)
    return Check(f"{member} defined", False, f"{type(b).__name__} does not define {member!r} "
                 f"(it would inherit portkit.Backend's default); {REQUIRED[member]}")


def attribute_check(b: Backend, name: str, tp: typing.Any) -> Check:
    if not hasattr(type(b), name):
        return Check(f"attribute {name}", False, f"{type(b).__name__}.{name} is missing; "
                     f"declare it as a class attribute of type {type_name(tp)}")
    value = getattr(type(b), name)
    if not type_ok(value, tp):
        return Check(f"attribute {name}", False, f"{type(b).__name__}.{name} = {value!r} is a "
                     f"{type(value).__name__}; it must be {type_name(tp)}")
    return Check(f"attribute {name}", True)


def method_check(b: Backend, name: str) -> Check:
    if isinstance(vars(Backend)[name], property):
        ok = isinstance(inspect_static(type(b), name), property)
        kind = "a property"
    else:
        ok = callable(getattr(b, name, None))
        kind = "a method"
    reason = "" if ok else (f"{type(b).__name__}.{name} is not {kind}; keep the signature of "
                            f"portkit.Backend.{name} (or delete your override to inherit it)")
    return Check(f"method {name}", ok, reason)


def inspect_static(cls: type, name: str) -> typing.Any:
    return next((vars(c)[name] for c in cls.__mro__ if name in vars(c)), None)


def type_ok(value: typing.Any, tp: typing.Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict) and all(type_ok(k, args[0]) and type_ok(v, args[1]) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def type_name(tp: typing.Any) -> str:
    if typing.get_origin(tp) is None and isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def probe_result(b: Backend) -> str | None:
    reason = b.probe()
    if reason is None:
        return None
    if isinstance(reason, str):
        return f"probe() says the backend is not usable here: {reason}"
    return f"probe() returned {type(reason).__name__} {reason!r}"


# -- behaviour ---------------------------------------------------------------------------
def behaviour_checks(b: Backend) -> list[Check]:
    """Each (name, function returning None or the reason, fix)."""
    table = [
        ("name is a lowercase identifier", lambda: name_ok(b), "rename the backend"),
        ("device_type is a torch device type", lambda: device_type_ok(b), "use the type torch.device() accepts"),
        ("setup() runs", lambda: b.setup(), "setup() imports the torch extension named by torch_extension"),
        ("dist_backend known to torch.distributed", lambda: dist_backend_ok(b),
         "register the communication library with torch.distributed (usually by importing the extension in setup())"),
        ("visible_devices_env is a variable name", lambda: env_name_ok(b.visible_devices_env), ""),
        ("device() is a torch.device of device_type", lambda: device_ok(b), ""),
        ("tensor arithmetic on device()", lambda: arithmetic_ok(b), "device() must name a device torch can allocate on"),
        ("device_count() >= 1", lambda: count_ok(b), ""),
        ("current_device() / set_device()", lambda: current_ok(b), ""),
        ("device_name(0) is a non-empty str", lambda: nonempty_str(b.device_name(0), "device_name(0)"), ""),
        ("synchronize() runs", lambda: b.synchronize(), ""),
        ("manual_seed() reproduces random tensors", lambda: seeding_ok(b),
         "manual_seed(seed) must seed the generator of every device (e.g. module.manual_seed_all)"),
        ("memory_stats() keys", lambda: stats_ok(b.memory_stats()), ""),
        ("reset_peak_memory() runs", lambda: b.reset_peak_memory(), ""),
        ("capabilities() is a Capabilities", lambda: capabilities_ok(b.capabilities()), ""),
        ("has_triton() is a bool", lambda: typed(b.has_triton(), bool, "has_triton()"), ""),
        ("peak_bf16_tflops() is a positive float or None", lambda: peak_ok(b.peak_bf16_tflops()), ""),
        ("versions() maps str to str or None", lambda: versions_ok(b.versions()), ""),
        ("launch_env() maps str to str", lambda: str_map(b.launch_env(), "launch_env()"), ""),
        ("describe() is JSON for portkit doctor", lambda: json_ok(b.describe()), ""),
    ]
    return [attempt(name, fn, fix) for name, fn, fix in table]


def name_ok(b: Backend) -> str | None:
    if re.fullmatch(r"[a-z][a-z0-9_]*", b.name or ""):
        return None
    return f"name {b.name!r} is not a lowercase identifier"


def device_type_ok(b: Backend) -> str | None:
    torch.device(b.device_type)
    return None


def dist_backend_ok(b: Backend) -> str | None:
    import torch.distributed as dist
    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    known = [str(n).lower() for n in dist.Backend.backend_list]
    if b.dist_backend.lower() not in known:
        return f"dist_backend {b.dist_backend!r} is not a torch.distributed backend here (known: {', '.join(known)})"
    return None


def env_name_ok(name: str | None) -> str | None:
    if name is None or ENV_RE.fullmatch(name):
        return None
    return f"visible_devices_env {name!r} is not an environment variable name (e.g. ASCEND_RT_VISIBLE_DEVICES)"


def device_ok(b: Backend) -> str | None:
    d = b.device()
    if not isinstance(d, torch.device):
        return f"device() returned {type(d).__name__} {d!r}, not a torch.device"
    if d.type != b.device_type:
        return f"device() is {d} but device_type is {b.device_type!r}; they must agree"
    return None


def arithmetic_ok(b: Backend) -> str | None:
    x = torch.arange(4.0, device=b.device())
    got = (x * 2).sum().item()
    return None if got == 12.0 else f"(arange(4) * 2).sum() on {b.device()} gave {got}, expected 12.0"


def count_ok(b: Backend) -> str | None:
    n = b.device_count()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return f"device_count() returned {n!r}; it must be an int >= 1 when probe() says the backend is usable"
    return None


def current_ok(b: Backend) -> str | None:
    i = b.current_device()
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < b.device_count():
        return f"current_device() returned {i!r}; expected an int in [0, device_count())"
    b.set_device(i)
    return None


def seeding_ok(b: Backend) -> str | None:
    draws = []
    for seed in (1234, 1234, 4321):
        b.manual_seed(seed)
        draws.append(torch.randn(16, device=b.device()).cpu())
    if not torch.equal(draws[0], draws[1]):
        return "manual_seed(1234) twice gave different torch.randn on the device"
    if torch.equal(draws[0], draws[2]):
        return "manual_seed(1234) and manual_seed(4321) gave the same torch.randn: the device generator is not seeded"
    return None


def stats_ok(stats: object) -> str | None:
    if not isinstance(stats, dict):
        return f"memory_stats() returned {type(stats).__name__}, expected a dict of bytes"
    absent = [k for k in STATS_KEYS if k not in stats]
    if absent:
        return f"memory_stats() lacks {', '.join(absent)} (needs {', '.join(STATS_KEYS)}, in bytes)"
    bad = [k for k in STATS_KEYS if isinstance(stats[k], bool) or not isinstance(stats[k], int) or stats[k] < 0]
    return f"memory_stats() values {', '.join(bad)} are not non-negative ints (bytes)" if bad else None


def capabilities_ok(caps: object) -> str | None:
    if isinstance(caps, Capabilities):
        return None
    return f"capabilities() returned {type(caps).__name__}, expected portkit.Capabilities"


def typed(value: object, tp: type, what: str) -> str | None:
    return None if isinstance(value, tp) else f"{what} returned {type(value).__name__} {value!r}, expected {tp.__name__}"


def nonempty_str(value: object, what: str) -> str | None:
    return None if isinstance(value, str) and value else f"{what} returned {value!r}, expected a non-empty str"


def peak_ok(value: object) -> str | None:
    if value is None or (type_ok(value, float) and value > 0):
        return None
    return f"peak_bf16_tflops() returned {value!r}, expected a positive float or None"


def versions_ok(value: object) -> str | None:
    if not type_ok(value, dict[str, str | None]):
        return f"versions() returned {value!r}, expected a dict of str to str or None"
    return None if "torch" in value else "versions() lacks the key 'torch'"


def str_map(value: object, what: str) -> str | None:
    return None if type_ok(value, dict[str, str]) else f"{what} returned {value!r}, expected a dict of str to str"


def json_ok(info: object) -> str | None:
    json.dumps(info)
    return None
