"""OS/TCP and communication-library tuning of cluster nodes.

Profiles (tuning/profiles/*.yaml, plus those plugins contribute through the
`portkit_tuning_profiles` hook) say what a node should look like; the engine reads the
current state under a root directory (default `/`), plans, applies with a snapshot,
verifies and rolls back. `portkit tune --help` is the command line.

Public API:
    load_profile(name_or_path) -> Profile          plan(profile, root) -> [Change]
    apply(profile, root, snapshot_dir, fail_at)    verify(profile, root) -> [Change]
    rollback(snapshot, root)                       export(profile, fmt) -> str
    launch_env(profile_name) -> dict[str, str]     ProfileError, TuneError
"""
from __future__ import annotations

from portkit.tuning.engine import ApplyResult, Change, TuneError, apply, plan, rollback, verify
from portkit.tuning.export import export
from portkit.tuning.profiles import Profile, load as load_profile, registry, validate_all
from portkit.tuning.schema import ProfileError

__all__ = ["ApplyResult", "Change", "Profile", "ProfileError", "TuneError", "apply", "export",
           "launch_env", "load_profile", "plan", "registry", "rollback", "validate_all", "verify"]


def launch_env(profile_name: str) -> dict[str, str]:
    """The environment a launcher exports into a job for this profile (after `extends:`).

    Raises ProfileError for an unknown or invalid profile: a job must not start on a
    half-understood fabric configuration.
    """
    return dict(load_profile(profile_name).env)
