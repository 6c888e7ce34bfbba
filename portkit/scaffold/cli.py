"""`portkit new-backend NAME`: write an installable backend plugin package.

The package (`portkit-NAME`, module `portkit_NAME`) holds a pyproject with entry points
in the groups `portkit.backends` and `portkit.ops`, the backend (a subclass of
portkit.ExtensionBackend, a CPU stand-in until the vendor sets hardware_ready), an
example fused op, a README with the steps and a test that runs
`portkit conformance --backend NAME`. Templates are the plain text files
in portkit/scaffold/templates/backend/, with {placeholders}.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import keyword
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import portkit
from portkit import atomic, runtime
from portkit.errors import UserError
from portkit.plugins import BACKENDS_GROUP

NAME_RE = re.compile(r"[a-z][a-z0-9_]*")

# Facts about known device types: (dist backend, torch extension module, visible-devices variable).
KNOWN_DEVICES: dict[str, tuple[str, str | None, str | None]] = {
    "cpu": ("gloo", None, None),
    "cuda": ("nccl", None, "CUDA_VISIBLE_DEVICES"),
    "npu": ("hccl", "torch_npu", "ASCEND_RT_VISIBLE_DEVICES"),
    "mlu": ("cncl", "torch_mlu", "MLU_VISIBLE_DEVICES"),
    "xpu": ("xccl", None, "ZE_AFFINITY_MASK"),
}

# template file -> path inside the generated package ({module} is replaced)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "backend.py.tmpl": "{module}/__init__.py",
    "ops.py.tmpl": "{module}/ops.py",
    "test_conformance.py.tmpl": "tests/test_conformance.py",
}


class ScaffoldError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Spec:
    name: str
    device_type: str
    dist_backend: str
    torch_extension: str | None
    visible_devices_env: str | None

    def values(self) -> dict[str, str]:
        """Placeholder -> text. Only these exact {keys} are replaced in the templates."""
        return {"name": self.name, "package": f"portkit-{self.name}", "module": f"portkit_{self.name}",
                "class_name": class_name(self.name), "device_type": self.device_type,
                "dist_backend": self.dist_backend, "torch_extension": literal(self.torch_extension),
                "visible_devices_env": literal(self.visible_devices_env),
                "portkit_version": portkit.__version__}


def literal(value: str | None) -> str:
    return "None" if value is None else f'"{value}"'


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_") if part) + "Backend"


def taken_names() -> dict[str, str]:
    """Names a new plugin must not use: entry points of the group and registered backends -> owner."""
    taken = {ep.name: (ep.dist.name if ep.dist else "?") for ep in importlib.metadata.entry_points(group=BACKENDS_GROUP)}
    for name in runtime.backends():
        taken.setdefault(name, "an installed plugin")
    return taken


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name) or keyword.iskeyword(name):
        raise ScaffoldError(f"backend name {name!r} is not valid: use a lowercase Python identifier "
                            f"(letters, digits, underscores, starting with a letter), e.g. 'acme_npu'")
    owner = taken_names().get(name)
    if owner == "portkit":
        raise ScaffoldError(f"backend name {name!r} is a built-in portkit plugin name; choose another, "
                            f"e.g. '{name}_vendor' or your company's name")
    if owner is not None:
        raise ScaffoldError(f"backend name {name!r} is already used by the installed distribution {owner!r}; "
                            f"choose another name or uninstall {owner}")


def make_spec(name: str, device_type: str | None, dist_backend: str | None,
              torch_extension: str | None = None) -> Spec:
    check_name(name)
    device_type = device_type or "cpu"
    if not NAME_RE.fullmatch(device_type):
        raise ScaffoldError(f"--device-type {device_type!r} is not a torch device type (lowercase, e.g. npu)")
    known = KNOWN_DEVICES.get(device_type)
    if dist_backend is None and known is None:
        raise ScaffoldError(f"device type {device_type!r} is not one portkit knows ({', '.join(KNOWN_DEVICES)}): "
                            f"pass --dist-backend, the torch.distributed backend of its communication library")
    dist_backend = dist_backend or known[0]
    if not NAME_RE.fullmatch(dist_backend):
        raise ScaffoldError(f"--dist-backend {dist_backend!r} is not a torch.distributed backend name (e.g. hccl)")
    ext = torch_extension or (known[1] if known else None)
    return Spec(name, device_type, dist_backend, ext, known[2] if known else None)


def render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def write_package(spec: Spec, dest: Path) -> list[Path]:
    """Write the plugin package into `dest` (absent or empty). Returns the files written."""
    if dest.exists() and any(dest.iterdir()):
        raise ScaffoldError(f"{dest} exists and is not empty; choose another --out or remove it")
    templates = importlib.resources.files("portkit.scaffold") / "templates" / "backend"
    values = spec.values()
    written = []
    for template, target in FILES.items():
        path = dest / render(target, values)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write(path, render((templates / template).read_text(), values))
        written.append(path)
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="backend name: a lowercase Python identifier, e.g. acme_npu")
    parser.add_argument("--device-type", help="torch device type of the hardware (default: cpu), e.g. npu, mlu, xpu")
    parser.add_argument("--dist-backend", help="torch.distributed backend (default for known device types: "
                        + ", ".join(f"{d}->{v[0]}" for d, v in KNOWN_DEVICES.items()) + ")")
    parser.add_argument("--torch-extension", help="module that adds the device to torch, e.g. torch_npu")
    parser.add_argument("--out", type=Path, help="folder to write (default: ./portkit-NAME)")


def main(args: argparse.Namespace) -> int:
    try:
        spec = make_spec(args.name, args.device_type, args.dist_backend, args.torch_extension)
        dest = args.out or Path(f"portkit-{spec.name}")
        files = write_package(spec, dest)
    except ScaffoldError as e:
        print(f"portkit new-backend: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files into {dest}/:")
    for path in files:
        print(f"  {path.relative_to(dest)}")
    print(f"\nnext:\n  pip install -e {dest}\n  portkit doctor\n  portkit conformance --backend {spec.name}\n"
          f"then fill in the VENDOR lines of {dest}/portkit_{spec.name}/__init__.py and set hardware_ready = True "
          f"(see {dest}/README.md).")
    return 0
