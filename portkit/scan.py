"""`portkit scan PATH`: the porting report of a code base, before the port starts.

Every .py file under PATH is read with ast (a file that does not parse is listed, not
fatal) and every device-specific use is given one verdict for the selected backend:

  handled      adapted automatically; `how` names the adaptation (ADAPTATIONS)
  native       runs as written on this backend (torch.cuda on CUDA/ROCm, NCCL_* under RCCL)
  attention    needs a change; `how` is the fix
  triton       a Triton kernel: portable to ROCm through Triton's HIP backend
  cannot_tell  a dynamic use: getattr(torch, 'cuda'), a device name built from strings,
               a branch on the device or communication-library name

What a use is: a torch.cuda member at each reference (through any alias, as `import torch
as th` or `from torch.cuda import amp`); a framework or package at each import (imports
inside the package itself are not uses); a string ('cuda', 'nccl', an environment
variable, nvidia-smi) where it is written, docstrings excepted.

"Handled" is read from the adaptation code, not restated here: the object that answers
torch.cuda on the backend (patches.torch_cuda.device_module), the apex shim's SERVED and
UNSERVED tables, the frameworks' patch lists and tested versions. The backend decides the
rest: its device type, communication library, visible-devices variable, SMI tool and, where
it is available on this machine, its capabilities (fp8, Triton).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from portkit import adapt, runtime
from portkit.backend import Backend, Capabilities
from portkit.patches import apex as apex_shim
from portkit.patches import colossalai as colo_patch
from portkit.patches import deepspeed as ds_patch
from portkit.patches import megatron as mg_patch
from portkit.patches import torch_cuda

VERDICTS = ("handled", "native", "attention", "triton", "cannot_tell")

# what `handled` names, one key per adaptation (docs/scan.md maps each to its tests)
ADAPTATIONS = {
    "torch.cuda": "torch.cuda redirection (patches/torch_cuda.py)",
    "device string": "device 'cuda' mapped to the backend's device type (patches/torch_cuda.py)",
    ".cuda()": "Tensor.cuda / Module.cuda moved to the backend's device (patches/torch_cuda.py)",
    "amp": "autocast / GradScaler with 'cuda' on the backend's device type",
    "nccl": "'nccl' replaced by the backend's communication library (patches/torch_cuda.py)",
    "visible devices": "CUDA_VISIBLE_DEVICES copied to the backend's variable before the script starts (portkit/adapt.py)",
    "deepspeed": f"DeepSpeed accelerator and op builders (patches/deepspeed.py, {ds_patch.VERSIONS})",
    "colossalai": f"Colossal-AI accelerator and kernel loaders (patches/colossalai.py, {colo_patch.VERSIONS})",
    "megatron-core": f"Megatron-core torch.cuda and RNG patches (patches/megatron.py, {mg_patch.VERSIONS})",
    "apex shim": "served by portkit's apex shim from portkit.ops (patches/apex.py)",
}
FRAMEWORK_IMPORTS = {"deepspeed": "deepspeed", "colossalai": "colossalai", "megatron.core": "megatron-core"}

CUDA_ONLY = {  # import root -> fix (NVIDIA-only packages)
    "flash_attn": "use torch.nn.functional.scaled_dot_product_attention (flash kernels where the backend "
                  "has them; ROCm has its own flash-attn build)",
    "xformers": "use torch.nn.functional.scaled_dot_product_attention",
    "bitsandbytes": "its kernels are CUDA builds (ROCm/CPU only in its multi-backend releases): check the "
                    "release for this backend, else use torch.optim.AdamW",
    "transformer_engine": "use torch layers in bf16 (portkit.ops for fused norms); ROCm: ROCm/TransformerEngine",
    "pynvml": "NVML is NVIDIA's: use the backend's SMI tool or torch memory calls through portkit",
}
AMP_CALLS = {"torch.autocast", "torch.amp.autocast", "torch.GradScaler", "torch.amp.GradScaler",
             "torch.amp.grad_scaler.GradScaler", "torch.amp.autocast_mode.autocast"}
EXTENSION_FIX = ("a CUDA C++ extension: on ROCm torch's cpp_extension hipifies it at build (try the build); "
                 "elsewhere write it as a Triton kernel or torch ops (a portkit op with a torch reference)")
MEMBER_FIXES = {  # torch.cuda member -> the fix where the backend lacks it
    "CUDAGraph": "CUDA graphs: turn them off for this backend (Megatron: cuda_graph_impl='none')",
    "graph": "CUDA graphs: turn them off for this backend (Megatron: cuda_graph_impl='none')",
    "graphs": "CUDA graphs: turn them off for this backend",
    "make_graphed_callables": "CUDA graphs: call the module directly on this backend",
    "nvtx": "NVTX ranges: use torch.profiler.record_function",
    "MemPool": "CUDA memory pools: leave them off (Megatron: nccl_ub=False)",
    "use_mem_pool": "CUDA memory pools: leave them off (Megatron: nccl_ub=False)",
    "get_device_properties": "ask portkit: portkit.backend().describe(), portkit.capabilities()",
    "get_device_capability": "ask portkit: portkit.capabilities() (bf16, fp8, flash attention)",
    "is_bf16_supported": "ask portkit: portkit.capabilities().bf16",
    "memory_stats": "use portkit.memory_stats()",
    "_lazy_call": "a private CUDA-init helper: call the function directly",
    "_lazy_init": "a private CUDA-init helper: drop the call",
}
TENSOR_TYPE = re.compile(r"torch\.cuda\.\w+Tensor")  # 'torch.cuda.HalfTensor', as Tensor.type() names it
TRITON_DECORATORS = {"triton.jit", "triton.autotune", "triton.heuristics"}
FP8_DTYPES = {"float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}
DEVICE_KWARGS = {"device", "device_type", "map_location"}
DEVICE_CALLS = {"device", "to", "Generator"}  # their first argument is a device
DEVICE_NAME = re.compile(r"cuda(:\d+)?")
NCCL_VAR = re.compile(r"(TORCH_)?NCCL_[A-Z0-9_]+")
CUDA_ITSELF = "cuda"  # the backend on which NVIDIA-only code runs as written


@dataclasses.dataclass(frozen=True, slots=True)
class Use:
    file: str
    line: int
    verdict: str
    framework: str
    what: str
    how: str  # the adaptation (handled, native), the fix (attention), the reason (triton, cannot_tell)


class Target:
    """What the scan needs to know about the backend it reports for."""

    def __init__(self, backend: Backend):
        self.backend, self.name = backend, backend.name
        self.cuda_type = backend.device_type == "cuda"
        self.caps: Capabilities | None = backend.capabilities() if backend.probe() is None else None
        try:  # the torch.cuda names the redirection forwards to the backend's device module
            self.forwarded = torch_cuda.forwarded_names(torch_cuda.device_module(backend))
        except AttributeError:  # torch.npu / torch.mlu exist only with the vendor's extension
            self.forwarded = None

    def adapted(self, adaptation: str) -> tuple[str, str]:
        if self.cuda_type:
            return "native", f"torch's own on {self.name}"
        return "handled", adaptation

    def cuda_member(self, member: str) -> tuple[str, str]:
        adaptation = "amp" if member == "amp" else "torch.cuda"
        if self.cuda_type:
            return self.adapted(adaptation)
        if member == "amp":  # torch.cuda.amp's autocast, GradScaler, custom_fwd/bwd take the device type
            return "handled", adaptation
        if self.forwarded is None:
            return "cannot_tell", (f"torch.{self.backend.device_type} is not importable here "
                                   f"(install {self.backend.torch_extension or 'its torch extension'} to check)")
        if member in self.forwarded:
            return "handled", adaptation
        fix = MEMBER_FIXES.get(member, "guard the call or remove it")
        return "attention", f"torch.cuda.{member} has no counterpart on {self.name}: {fix}"

    def capability(self, flag: str, what: str, fix: str) -> tuple[str, str]:
        if self.caps is None:
            return "cannot_tell", f"backend {self.name} is not available here to ask whether it has {what}"
        if getattr(self.caps, flag):
            return "native", f"{self.name} has {what}"
        return "attention", f"{self.name} has no {what}: {fix}"


# -- verdicts on names ----------------------------------------------------------------------
def apex_verdict(name: str) -> tuple[str, str]:
    """The apex shim's verdict on an apex module or member, from its own tables."""
    module, _, member = name.rpartition(".")
    exported = {item.partition("=")[0] for item in apex_shim.SERVED.get(module, (0, "", ""))[2].split()}
    if name in apex_shim.SERVED or member in exported:
        return "handled", "apex shim"
    hints = {**apex_shim.UNSERVED, **apex_shim.UNSERVED_NAMES}
    hint = next((h for key, h in hints.items() if name == key or name.startswith(key + ".")), None)
    return "attention", f"{name} is not served by portkit's apex shim: " + (
        hint or "served are " + ", ".join(sorted(n for n in apex_shim.SERVED if n.startswith("apex."))))


def import_verdict(name: str, t: Target) -> tuple[str, tuple[str, str]] | None:
    """(framework, (verdict, how)) for an imported module or member; None when it is not a use."""
    root = name.split(".")[0]
    if root == "apex" or root in apex_shim.SERVED:
        return "apex", apex_verdict(name)
    for prefix, framework in FRAMEWORK_IMPORTS.items():
        if name == prefix or name.startswith(prefix + "."):
            return framework, t.adapted(framework)
    if root in CUDA_ONLY:
        return root, ("native", f"runs on {t.name}") if t.name == CUDA_ITSELF else ("attention", CUDA_ONLY[root])
    return None


def env_verdict(var: str, t: Target, written: bool) -> tuple[str, str]:
    """CUDA_VISIBLE_DEVICES (read or `written` by the script) and NCCL_* on the backend."""
    b, own = t.backend, t.backend.visible_devices_env
    if var == adapt.CUDA_VISIBLE:
        if own in (None, var):
            return "native", f"the {t.name} backend's variable" if own else f"no effect on {t.name}"
        if written:
            return "attention", (f"set {own} instead: portkit copies {var} to it only when set "
                                 "before the script starts")
        return "handled", "visible devices"
    if b.dist_backend == "nccl":
        return "native", "read by NCCL (RCCL on ROCm)"
    return "attention", (f"{b.dist_backend} does not read {var}: set the {b.dist_backend} equivalent "
                         f"({b.dist_backend.upper()}_* variables) or drop it")


# -- the visitor ----------------------------------------------------------------------------
def literal_prefix(node: ast.AST) -> str | None:
    """The literal start of a string-building expression ('' when it starts with a variable)."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        return first.value if isinstance(first, ast.Constant) else ""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return literal_prefix(node.left)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return literal_prefix(node.func.value)
    return None


class Visitor(ast.NodeVisitor):
    """Collects the uses of one file."""

    def __init__(self, path: Path, file: str, t: Target,
                 triton_check: Callable[[str, str, Backend], str | None] | None):
        self.path, self.file, self.t, self.triton_check = path, file, t, triton_check
        self.names: dict[str, str] = {}  # local name -> the dotted name it was imported as
        self.uses: list[Use] = []
        self.seen: set[int] = set()  # ids of nodes already reported as part of a larger use

    def add(self, node: ast.AST, framework: str, what: str, found: tuple[str, str]) -> None:
        self.uses.append(Use(self.file, node.lineno, found[0], framework, what, found[1]))

    def qualname(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Expr(self, node: ast.Expr) -> None:  # docstrings and bare strings are not uses
        if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            self.generic_visit(node)

    # -- imports: frameworks, apex, NVIDIA-only packages --------------------------------
    # (each import also records the name it binds: the table is flat, filled in source order)
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            root = a.name.split(".")[0]
            self.names[a.asname or root] = a.name if a.asname else root
            self.imported(node, a.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            for a in node.names:
                self.names[a.asname or a.name] = f"{node.module}.{a.name}"
                self.imported(node, node.module if a.name == "*" else f"{node.module}.{a.name}")

    def imported(self, node: ast.AST, name: str) -> None:
        found = None if internal(self.path, name) else import_verdict(name, self.t)
        if found:
            self.add(node, found[0], f"import {name}", found[1])

    # -- names: torch.cuda members, apex members, torch.version.cuda, fp8 dtypes ---------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not self.named(node, self.qualname(node)):
            self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        q = self.qualname(node)
        if isinstance(node.ctx, ast.Load) and q and not q.startswith("apex"):  # apex: counted at its import
            self.named(node, q)

    def named(self, node: ast.AST, q: str | None) -> bool:
        """Report the use `q` names, if any; True when the node needs no further visit."""
        if id(node) in self.seen:
            return True
        rule = self.name_rule(q) if q else None
        if rule:
            self.add(node, *rule)
        return rule is not None

    def name_rule(self, q: str) -> tuple[str, str, tuple[str, str]] | None:
        parts, t = q.split("."), self.t
        if q == "torch.cuda":
            return "torch", q, ("cannot_tell", "torch.cuda used as an object: which calls it makes cannot be read")
        if parts[:2] == ["torch", "cuda"]:
            return "torch", q, t.cuda_member(parts[2])
        if parts[0] == "apex" and len(parts) > 1 and not parts[-1].startswith("__"):
            return "apex", q, apex_verdict(q)
        if q == "torch.version.cuda":
            return "torch", q, (("native", "a CUDA build") if t.name == CUDA_ITSELF else
                                ("attention", f"None on {t.name}'s torch: guard it (torch.version.hip on ROCm)"))
        if parts[0] == "torch" and parts[-1] in FP8_DTYPES:
            return "torch", q, t.capability("fp8", "fp8", "keep this path in bf16")
        return None

    # -- calls ---------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        q = self.qualname(func) or ""
        if name == "hasattr" and node.args and self.qualname(node.args[0]) in ("torch", "torch.cuda"):
            self.seen.add(id(node.args[0]))  # hasattr(torch.cuda, 'x') guards the use it probes for
        elif isinstance(func, ast.Name) and name == "getattr" and len(node.args) >= 2:
            self.dynamic_attribute(node)
        elif name == "cuda" and not q:
            self.add(node, "torch", ".cuda()", self.t.adapted(".cuda()"))
        elif q in AMP_CALLS:
            self.amp_call(node, q)
        elif name == "CUDAExtension" or (q.startswith("torch.utils.cpp_extension.") and self.loads_cuda(node)):
            self.add(node, "torch", q or name, ("native", "builds with nvcc") if self.t.name == CUDA_ITSELF
                     else ("attention", EXTENSION_FIX))
        if name in ("setdefault", "putenv") and node.args:
            self.env_written(node.args[0])
        self.nvidia_smi(node)
        self.device_positions(node, name)
        self.generic_visit(node)

    def dynamic_attribute(self, node: ast.Call) -> None:
        obj, attr = node.args[:2]
        base = self.qualname(obj)
        if base not in ("torch", "torch.cuda"):
            return
        self.seen.update((id(obj), id(attr)))
        if isinstance(attr, ast.Constant) and isinstance(attr.value, str):
            rule = self.name_rule(f"{base}.{attr.value}")
            if rule:
                self.add(node, rule[0], f"getattr({base}, {attr.value!r})", rule[2])
            return
        self.add(node, "torch", f"getattr({base}, ...)",
                 ("cannot_tell", f"an attribute of {base} named at run time"))

    def amp_call(self, node: ast.Call, q: str) -> None:
        device = node.args[0] if node.args else next(
            (k.value for k in node.keywords if k.arg in ("device_type", "device")), None)
        if isinstance(device, ast.Constant) and isinstance(device.value, str) and DEVICE_NAME.fullmatch(device.value):
            self.seen.add(id(device))
            self.add(node, "torch", f"{q}({device.value!r})", self.t.adapted("amp"))

    @staticmethod
    def loads_cuda(node: ast.Call) -> bool:
        """cpp_extension.load / load_inline given .cu sources or cuda_sources."""
        sources = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        return any(k.arg == "cuda_sources" for k in node.keywords) or any(s.endswith((".cu", ".cuh")) for s in sources)

    def nvidia_smi(self, node: ast.Call) -> None:
        args = [e for a in node.args for e in (a.elts if isinstance(a, (ast.List, ast.Tuple)) else [a])]
        for a in args:
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.split()[:1] == ["nvidia-smi"]:
                self.seen.add(id(a))
                tool = self.t.backend.smi_tool
                instead = f"use {tool} on {self.t.name}" if tool else f"the {self.t.name} backend has no SMI tool"
                self.add(a, "tools", "nvidia-smi", ("native", "the backend's SMI tool") if tool == "nvidia-smi" else
                         ("attention", f"{instead}; `portkit doctor --json` reports devices on every backend"))

    def device_positions(self, node: ast.Call, name: str) -> None:
        """A device name built at run time where a device is expected cannot be read."""
        values = [k.value for k in node.keywords if k.arg in DEVICE_KWARGS]
        values += node.args[:1] if name in DEVICE_CALLS else []
        for v in values:
            prefix = literal_prefix(v)
            if prefix is not None and not isinstance(v, ast.Constant) and not prefix.startswith("cuda"):
                self.seen.add(id(v))
                self.add(v, "torch", "device name built at run time",
                         ("cannot_tell", "the device comes from a string built at run time"))

    # -- strings ---------------------------------------------------------------------------
    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if not isinstance(v, str) or id(node) in self.seen:
            return
        if DEVICE_NAME.fullmatch(v):
            self.add(node, "torch", repr(v), self.t.adapted("device string"))
        elif v == "nccl":
            self.add(node, "torch", "'nccl'", ("native", "the backend's library") if self.t.backend.dist_backend == v
                     else ("handled", "nccl"))
        elif TENSOR_TYPE.fullmatch(v):
            self.add(node, "torch", repr(v), self.t.adapted("") if self.t.cuda_type else (
                "attention", f"Tensor.type() names the device: on {self.t.name} it is not {v!r}; "
                             "compare .dtype and .device.type instead"))
        elif v == adapt.CUDA_VISIBLE or NCCL_VAR.fullmatch(v):
            self.add(node, "environment", v, env_verdict(v, self.t, written=False))

    def env_written(self, key: ast.AST) -> None:
        """os.environ[KEY] = ..., os.environ.setdefault(KEY, ...), os.putenv(KEY, ...)."""
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and id(key) not in self.seen \
                and (key.value == adapt.CUDA_VISIBLE or NCCL_VAR.fullmatch(key.value)):
            self.seen.add(id(key))
            self.add(key, "environment", key.value, env_verdict(key.value, self.t, written=True))

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, ast.Store):
            self.env_written(node.slice)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        if id(node) not in self.seen and (literal_prefix(node) or "").startswith("cuda:"):
            self.add(node, "torch", "f'cuda:{...}'", self.t.adapted("device string"))
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        """`device.type == 'cuda'`, `backend == 'nccl'`: branches whose outcome the port changes."""
        for side in [node.left, *node.comparators]:
            for c in side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]:
                if isinstance(c, ast.Constant) and c.value in ("cuda", "nccl"):
                    self.seen.add(id(c))
                    self.add(c, "torch", f"compared with {c.value!r}", self.branch(c.value))
        self.generic_visit(node)

    def branch(self, value: str) -> tuple[str, str]:
        b = self.t.backend
        now = b.device_type if value == "cuda" else b.dist_backend
        if now == value:
            return "native", f"still {value!r} on {b.name}"
        return "cannot_tell", f"branches on {value!r}: on {b.name} it is {now!r}, so the other branch runs"

    # -- Triton kernels --------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        decorators = [self.qualname(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]
        if any(d in TRITON_DECORATORS for d in decorators):
            self.add(node, "triton", f"Triton kernel {node.name}", self.triton_verdict(node.name))
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def triton_verdict(self, kernel: str) -> tuple[str, str]:
        t = self.t
        if t.caps is not None and not t.caps.triton:
            return "attention", f"{t.name} has no Triton: give the kernel a torch fallback (as portkit.ops does)"
        error = self.triton_check(self.file, kernel, t.backend) if self.triton_check else None
        if error:
            return "attention", f"does not compile for {t.name}: {error}"
        where = f"{t.name} has Triton" if t.caps else f"{t.name} is not available here to ask"
        return "triton", f"portable to ROCm (Triton's HIP backend); {where}"


# -- the scan -------------------------------------------------------------------------------
class ScanError(ValueError):
    pass


def internal(path: Path, name: str) -> bool:
    """Whether `path` lies inside the package `name` is imported from (a framework's own
    imports of itself are not uses); namespace packages such as megatron/ count too."""
    root, _, rest = name.partition(".")
    for d in path.parents:
        if d.name == root and ((d / "__init__.py").exists() or (d / rest.split(".")[0] / "__init__.py").exists()):
            return True
    return False


def python_files(root: Path) -> list[Path]:
    """.py files under root; hidden directories (.git, .venv) are skipped."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(root).parts))


def scan_file(path: Path, rel: str, t: Target, triton_check=None) -> list[Use]:
    tree = ast.parse(path.read_bytes(), filename=rel)
    v = Visitor(path.resolve(), rel, t, triton_check)
    v.visit(tree)
    return v.uses


def scan(path: str | Path, backend: Backend,
         triton_check: Callable[[str, str, Backend], str | None] | None = None) -> dict[str, Any]:
    """The report as plain data. `triton_check(file, kernel, backend)` returns why a Triton
    kernel does not compile for the backend's targets, or None (the AMD compile check plugs in here)."""
    root = Path(path)
    if not root.exists():
        raise ScanError(f"{path}: no such file or directory")
    start, t = time.perf_counter(), Target(backend)
    uses: list[Use] = []
    unparsed = []
    files = python_files(root)
    for f in files:
        rel = f.name if root.is_file() else str(f.relative_to(root))
        try:
            uses += scan_file(f, rel, t, triton_check)
        except (SyntaxError, ValueError, RecursionError, OSError) as e:  # listed, not fatal
            unparsed.append({"file": rel, "error": f"{type(e).__name__}: {e}"})
    return {"path": str(root), "backend": backend.name, "files": len(files), "unparsed": unparsed,
            "seconds": round(time.perf_counter() - start, 2), "summary": summary(uses),
            "uses": [dataclasses.asdict(u) for u in uses]}


def summary(uses: list[Use]) -> dict[str, Any]:
    verdicts = Counter(u.verdict for u in uses)
    frameworks: dict[str, Counter] = {}
    for u in uses:
        frameworks.setdefault(u.framework, Counter())[u.verdict] += 1
    return {"uses": len(uses), "verdicts": {v: verdicts[v] for v in VERDICTS},
            "frameworks": {fw: dict(c) for fw, c in sorted(frameworks.items())},
            "adaptations": dict(Counter(u.how for u in uses if u.verdict == "handled").most_common()),
            "torch_cuda": sum(u.what.startswith("torch.cuda") for u in uses)}


# -- the command ----------------------------------------------------------------------------
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a Python file or a folder of them (read, never run)")
    p.add_argument("--backend", metavar="NAME",
                   help="the backend to port to (any installed one; default: the best available here)")
    p.add_argument("--json-out", metavar="FILE", help="also write the whole report as JSON (atomically)")


def main(args: argparse.Namespace) -> int:
    try:
        report = scan(args.path, pick(args.backend))
        if args.json_out:
            write_json(Path(args.json_out), report)
    except (ScanError, runtime.BackendError) as e:
        print(f"portkit scan: {e}", file=sys.stderr)
        return 2
    render(report)
    return 0


def pick(name: str | None) -> Backend:
    """The named backend, available here or not (a scan plans a port), else the selected one."""
    if name is None:
        return runtime.select()
    known = runtime.backends()
    if name not in known:
        raise ScanError(f"unknown backend {name!r}; installed: {', '.join(sorted(known))}")
    return known[name]


def write_json(path: Path, report: dict[str, Any]) -> None:
    from portkit.tuning.snapshot import atomic_write
    try:
        atomic_write(path, json.dumps(report, indent=1).encode())
    except OSError as e:
        raise ScanError(f"cannot write --json-out {path}: {e.strerror or e}") from None


PLAIN = dict(markup=False, highlight=False, soft_wrap=True)  # file:line lines stay whole and greppable


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    console, s = Console(), report["summary"]
    v = s["verdicts"]
    console.print(f"[bold]{report['path']}[/]: {report['files']} files, {len(report['unparsed'])} not parsed, "
                  f"{s['uses']} device-specific uses, backend [bold]{report['backend']}[/] ({report['seconds']} s)")
    console.print(framework_table(s))
    console.print(adaptation_table(s))
    for verdict, title in (("attention", "needs attention"), ("cannot_tell", "cannot tell"), ("triton", "Triton kernels")):
        rows = [u for u in report["uses"] if u["verdict"] == verdict]
        console.print(f"[bold]{title}[/] ({len(rows)})")
        for u in rows:
            console.print(f"  {u['file']}:{u['line']}  {u['what']}: {u['how']}", **PLAIN)
    for bad in report["unparsed"]:
        console.print(f"not parsed: {bad['file']}: {bad['error']}", **PLAIN)
    console.print(f"[bold]{v['handled']} of {s['uses']} uses adapted automatically[/], {v['native']} run as written "
                  f"on {report['backend']}, {v['attention']} need attention, {v['triton']} Triton kernels, "
                  f"{v['cannot_tell']} cannot tell")


def _table(title: str, *columns: str):
    from rich.table import Table
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    return table


def framework_table(s: dict[str, Any]):
    t = _table("uses by framework and verdict", "framework", *VERDICTS, "total")
    rows = [*s["frameworks"].items(), ("all", s["verdicts"])]
    for fw, counts in rows:
        t.add_row(fw, *(str(counts.get(v, 0)) for v in VERDICTS), str(sum(counts.values())))
    return t


def adaptation_table(s: dict[str, Any]):
    t = _table("handled by", "adaptation", "what it does", "uses")
    for key, n in s["adaptations"].items():
        t.add_row(key, ADAPTATIONS[key], str(n))
    return t
