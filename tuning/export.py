"""Render a profile for configuration management: sysctl.d, limits.d, a sourceable env file,
or nccl.conf. The output is what `apply` would write, so the two never disagree."""
from __future__ import annotations

import shlex

from portkit.tuning.engine import render_limits, render_nccl_conf
from portkit.tuning.profiles import Profile
from portkit.tuning.schema import AT_LEAST

FORMATS = ("sysctl.d", "limits.d", "env", "nccl.conf")


def header(profile: Profile) -> str:
    return f"# portkit tuning profile {profile.name} ({' -> '.join(profile.chain)})\n"


def sysctl_d(profile: Profile) -> str:
    """sysctl.d has no 'at least': a '>=N' value is written as N under a comment saying so."""
    lines = []
    for key, value in profile.sysctl.items():
        if value.startswith(AT_LEAST):
            value = value[len(AT_LEAST):]
            lines.append(f"# at least {value}: `portkit tune apply` keeps larger values, this file does not\n")
        lines.append(f"{key} = {value}\n")
    return header(profile) + "".join(lines)


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
