"""Render a profile for configuration management: sysctl.d, limits.d, a sourceable env file,
or nccl.conf. The output is what `apply` would write, so the two never disagree."""
from __future__ import annotations

import shlex

from portkit.tuning.engine import render_limits, render_nccl_conf
from portkit.tuning.profiles import Profile

FORMATS = ("sysctl.d", "limits.d", "env", "nccl.conf")


def header(profile: Profile) -> str:
    return f"# portkit tuning profile {profile.name} ({' -> '.join(profile.chain)})\n"


def sysctl_d(profile: Profile) -> str:
    return header(profile) + "".join(f"{k} = {v}\n" for k, v in profile.sysctl.items())


def env_file(profile: Profile) -> str:
    return header(profile) + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in profile.env.items())


def nccl_conf(profile: Profile) -> str:
    keys = {k: v for k, v in profile.env.items() if k.startswith("NCCL_")}
    return render_nccl_conf(header(profile), keys)


def export(profile: Profile, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    render = {"sysctl.d": sysctl_d, "limits.d": render_limits, "env": env_file, "nccl.conf": nccl_conf}[fmt]
    return render(profile)
