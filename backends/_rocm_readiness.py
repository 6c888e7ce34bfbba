"""The ROCm/DCU readiness report `portkit doctor --backend rocm` shows: the toolkit (DTK
and its env.sh on a DCU), the hy-smi table, the RCCL settings the dcu-rocm tuning profile
checks, which portkit Triton kernels compile for this device's architecture, and the
implementation each op falls back to where no kernel serves it."""
from __future__ import annotations

import os
from typing import Any

PROFILE = "dcu-rocm"
RCCL_CHECKS = ("numa_balancing", "iommu")  # read under the system root by the tuning engine
RCCL_ENV = ("HSA_FORCE_FINE_GRAIN_PCIE",)  # read from this process's environment


def report(backend, root: str) -> dict[str, list[dict[str, Any]]]:
    """Section title -> rows (each a dict of column -> value)."""
    arch = backend.arch()
    kernels = kernel_rows(arch)
    sections = {}
    if backend.flavour() == "dcu":
        sections["DTK"] = [dtk_row()]
        sections["hy-smi"] = backend.describe().get("smi_devices") or [{"hy-smi": "no table (tool absent or silent)"}]
    sections[f"RCCL settings (tuning profile {PROFILE})"] = rccl_rows(root, backend.launch_env())
    sections[f"portkit Triton kernels for {arch}"] = kernels
    sections["op fallbacks"] = fallback_rows(backend, kernels)
    return sections


def dtk_row() -> dict[str, Any]:
    from portkit.backends.rocm import find_dtk
    dtk = find_dtk()
    if dtk is None:
        return {"path": "not found", "version": "-", "env.sh": "-",
                "fix": "install DTK under /opt/dtk (or set $DTK) and `source ${DTK}/env.sh`"}
    sourced = os.environ.get("ROCM_PATH") == dtk["path"]
    return {"path": dtk["path"], "version": dtk["version"] or "unknown",
            "env.sh": ("present" if dtk["env_sh"] else "MISSING") + (", sourced" if sourced else ", not sourced "
                                                                     "(ROCM_PATH does not point at it)")}


def rccl_rows(root: str, launch_env: dict[str, str]) -> list[dict[str, Any]]:
    from pathlib import Path

    from portkit.tuning import engine, profiles
    prof = profiles.load(PROFILE)
    rows = []
    for key in RCCL_CHECKS:
        where, current, ok = engine.CHECKERS[key](Path(root), prof.checks[key])
        rows.append({"setting": key, "current": current, "wanted": prof.checks[key], "ok": ok, "where": where})
    for key in RCCL_ENV:
        current, wanted = os.environ.get(key), prof.env[key]
        rows.append({"setting": key, "current": current, "wanted": wanted, "ok": current == wanted,
                     "where": f"environment (portkit launch/run set {launch_env.get(key)!r})"})
    return rows


def kernel_rows(arch: str) -> list[dict[str, Any]]:
    """One row per kernel launch compiled for `arch` (or one unverified/failed row)."""
    from portkit.ops import crosscompile
    rows = []
    for r in crosscompile.check([arch]):
        occ = r.occupancy
        rows.append({"op": r.op or "(every op)", "kernel": r.kernel, "status": r.status,
                     "regs/spills/LDS/occupancy": f"{r.regs}/{r.spills}/{r.smem}/{occ['warps']}of{occ['max']}"
                     if r.status == crosscompile.OK else r.error})
    return rows


def fallback_rows(backend, kernels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per op: what dispatch selects, whether its Triton kernels compile here, and the
    implementation the op takes without them (the next one that runs here, else the reference)."""
    from portkit.ops import registry
    compiled: dict[str, bool] = {}
    for k in kernels:
        compiled[k["op"]] = compiled.get(k["op"], True) and k["status"] == "compiled"
    rows = []
    for row in registry.table(backend):
        op, impls = row["op"], registry.implementations(row["op"])
        served = compiled.get(op, compiled.get("(every op)")) if "triton" in row["implementations"] else None
        others = [i.name for i in impls if i.name != "triton" and i.predicate(backend)]
        rows.append({"op": op, "selected": row["selected"],
                     "Triton kernel here": {True: "compiles", False: "does not compile", None: "-"}[served],
                     "without it": (others or ["reference (torch)"])[0]})
    return rows
