"""Tuning profiles: typed YAML files with `extends:`, found among the shipped profiles and
those plugins contribute through the `portkit_tuning_profiles` hook.

One file holds data only:

    description: what the profile is for
    extends: base            # a profile name, or a list of them (later ones win)
    sysctl:   {net.core.somaxconn: 4096, ...}       # schema.SYSCTL allowlist
    ulimits:  {memlock: unlimited, nofile: 1048576}  # or {soft: N, hard: M}
    checks:   {numa_balancing: 0, iommu: pt, transparent_hugepage: madvise, cpu_governor: performance}
    env:      {NCCL_SOCKET_IFNAME: "^docker,lo", ...}  # exported into launched jobs
    nccl_conf: true          # also write the NCCL_* variables to /etc/nccl.conf

A child's value replaces its parent's; `null` removes an inherited key. Every value is
checked when its own file is read, so errors name the file that holds the bad key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from portkit import config
from portkit.tuning import schema
from portkit.tuning.schema import ProfileError

SHIPPED_DIR = Path(__file__).parent / "profiles"
SECTIONS = ("sysctl", "ulimits", "checks", "env")


@dataclass(kw_only=True)
class ProfileFile:
    """The keys one YAML file may hold; values are checked against schema afterwards."""
    description: str = ""
    extends: str | list[str] | None = None
    sysctl: dict[str, Any] = field(default_factory=dict)
    ulimits: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    nccl_conf: bool | None = None


@dataclass
class Profile:
    """A profile with its parents merged in; every value is canonical text."""
    name: str
    path: Path
    description: str
    chain: list[str]                      # names merged, parents first, this one last
    sysctl: dict[str, str] = field(default_factory=dict)
    ulimits: dict[str, tuple[str, str]] = field(default_factory=dict)  # item -> (soft, hard)
    checks: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    nccl_conf: bool = False


@dataclass
class Layer:
    """One file, validated; None values delete inherited keys."""
    name: str
    path: Path
    data: ProfileFile
    values: dict[str, dict[str, Any]]


VALIDATORS = {"sysctl": schema.sysctl_value, "ulimits": schema.ulimit_value,
              "checks": schema.check_value, "env": schema.env_value}


def read_layer(path: Path) -> Layer:
    """Load and check one profile file (no parents)."""
    try:
        data = config.build(ProfileFile, config.load_yaml(path), str(path))
    except config.ConfigError as e:
        raise ProfileError(str(e)) from None
    _no_duplicate_keys(path)
    values = {}
    for section in SECTIONS:
        raw = getattr(data, section)
        values[section] = {k: None if v is None else VALIDATORS[section](k, v, f"{path}: {section}.{k}")
                           for k, v in raw.items()}
    return Layer(path.stem, path, data, values)


class _DuplicateCheck(yaml.SafeLoader):
    """safe_load keeps the last of two equal keys; in a profile that hides a mistake."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ProfileError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _no_duplicate_keys(path: Path) -> None:
    try:
        yaml.load(path.read_text(), Loader=_DuplicateCheck)  # noqa: S506 - a SafeLoader subclass
    except ProfileError as e:
        raise ProfileError(f"{path}: {e}") from None


def _cross_checks(prof: "Profile") -> None:
    """Checks between keys, made on the merged profile (the keys may come from different files)."""
    nofile = prof.ulimits.get("nofile")
    # 1048576: the kernel's default fs.nr_open; a '>=N' floor guarantees at least N
    nr_open = int(prof.sysctl.get("fs.nr_open", "1048576").removeprefix(schema.AT_LEAST))
    if nofile and schema.limit_number(nofile[1]) > nr_open:
        raise ProfileError(f"{prof.path}: ulimits.nofile hard limit {nofile[1]} exceeds fs.nr_open {nr_open}; "
                           f"pam_limits would fail the login. Lower nofile or set sysctl fs.nr_open >= {nofile[1]}")
    threads, socks = (int(prof.env.get(k, 1)) for k in ("NCCL_SOCKET_NTHREADS", "NCCL_NSOCKS_PERTHREAD"))
    if threads * socks > 64:  # NCCL env docs: the product cannot exceed 64
        raise ProfileError(f"{prof.path}: env NCCL_SOCKET_NTHREADS x NCCL_NSOCKS_PERTHREAD = {threads} x {socks} "
                           f"= {threads * socks}; NCCL allows at most 64")


def registry(plugins=None) -> dict[str, Path]:
    """Profile name -> file, shipped first, then plugin contributions.

    A plugin whose path is missing or whose name is taken is reported in the plugin
    errors (`portkit doctor`, `portkit tune list`) and its profile skipped.
    """
    found = {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}
    owner = {name: "portkit" for name in found}
    if plugins is None:
        from portkit import runtime
        plugins = runtime.plugins()
    from portkit.plugins import PluginError
    for plugin, item in plugins.call_flat("portkit_tuning_profiles"):
        path = Path(item)
        reason = None
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            reason = f"tuning profile {path} is not an existing .yaml file"
        elif path.stem in found:
            reason = f"tuning profile name {path.stem!r} ({path}) is already provided by {owner[path.stem]!r} ({found[path.stem]}); rename one"
        if reason:
            plugins.errors.append(PluginError(plugin, "portkit_tuning_profiles", reason))
            continue
        found[path.stem], owner[path.stem] = path, plugin
    return found


def find(ref: str, known: dict[str, Path]) -> Path:
    """A profile reference is a file path (ends in .yaml/.yml or has a '/') or a name."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref)
        if not path.is_file():
            raise ProfileError(f"profile file {ref} does not exist")
        return path
    if ref not in known:
        raise ProfileError(f"unknown tuning profile {ref!r}; available: {', '.join(sorted(known))} "
                           f"(or give a path to a .yaml file)")
    return known[ref]


def load(ref: str, plugins=None, known: dict[str, Path] | None = None) -> Profile:
    """Load profile `ref` (name or path) with its `extends:` chain merged."""
    known = registry(plugins) if known is None else known
    path = find(ref, known)
    layers = _chain(path, known, stack=[])
    return _merge(path, layers)


def _chain(path: Path, known: dict[str, Path], stack: list[Path]) -> list[Layer]:
    """Layers from the farthest ancestor to `path`, each at most once; cycles are errors."""
    if path.resolve() in [p.resolve() for p in stack]:
        names = " -> ".join(p.stem for p in [*stack, path])
        raise ProfileError(f"{stack[-1]}: extends cycle {names}; remove one of these extends")
    layer = read_layer(path)
    parents = layer.data.extends or []
    parents = [parents] if isinstance(parents, str) else parents
    out: list[Layer] = []
    for name in parents:
        parent = _sibling(path, name) or known.get(name)
        if parent is None:
            raise ProfileError(f"{path}: extends {name!r}, which is not a known profile; "
                               f"available: {', '.join(sorted(known))}")
        for up in _chain(parent, known, [*stack, path]):
            if up.path.resolve() not in [o.path.resolve() for o in out]:
                out.append(up)
    return [*out, layer]


def _sibling(path: Path, name: str) -> Path | None:
    """A profile outside the registry may extend files next to it."""
    for suffix in (".yaml", ".yml"):
        candidate = path.parent / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _merge(path: Path, layers: list[Layer]) -> Profile:
    prof = Profile(name=path.stem, path=path, description=layers[-1].data.description,
                   chain=[layer.name for layer in layers])
    for layer in layers:
        for section in SECTIONS:
            target = getattr(prof, section)
            for key, value in layer.values[section].items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        if layer.data.nccl_conf is not None:
            prof.nccl_conf = layer.data.nccl_conf
    _cross_checks(prof)
    return prof


def validate_all(plugins=None) -> dict[str, str | None]:
    """Every known profile -> None when it loads, else the error text."""
    known = registry(plugins)
    result: dict[str, str | None] = {}
    for name in sorted(known):
        try:
            load(name, known=known)
            result[name] = None
        except ProfileError as e:
            result[name] = str(e)
    return result
