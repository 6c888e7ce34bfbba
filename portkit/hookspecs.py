"""Every hook a portkit plugin may implement. Each docstring is the contract.

A plugin is a module (or object) named by an entry point in one of the groups
`portkit.backends` (backends, with their doctor checks and launch environment),
`portkit.ops` (fused ops) and `portkit.patches` (framework adapters); portkit/plugins.py
says how they load. It implements the hooks it needs with `@portkit.hookimpl`:

    # my_vendor/__init__.py
    import portkit

    class MyBackend(portkit.Backend):
        name = "myvendor"
        ...

    @portkit.hookimpl
    def portkit_register_backends():
        return [MyBackend]

A hook that raises is reported by plugin name and reason (`portkit doctor`) and its
result skipped; the other plugins carry on.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("portkit")
hookimpl = pluggy.HookimplMarker("portkit")


@hookspec
def portkit_register_backends() -> list:
    """Return Backend subclasses (classes, not instances) this plugin provides.

    Each class needs a unique `name`; two plugins claiming the same name is an error
    naming both. Classes are instantiated lazily and `probe()` decides availability.
    """


@hookspec
def portkit_register_ops() -> list:
    """Return `portkit.ops.OpImpl` entries: (op name, implementation, predicate, priority).

    `predicate(backend)` says whether the implementation runs on the active backend;
    dispatch takes the highest priority whose predicate holds, else the torch reference.
    The callable must take the same arguments as the op's reference in `portkit.ops`.
    """


@hookspec
def portkit_register_patches() -> list:
    """Return `portkit.patching.Patch` objects: framework, tested version range, target,
    one-line description, apply and undo. Registration fails if two patches share a name."""


@hookspec
def portkit_tuning_profiles() -> list:
    """Return paths to tuning profile YAML files (see tuning/profiles for the schema).
    A profile name must be unique across plugins."""


@hookspec
def portkit_doctor_checks(backend) -> list:
    """Return extra diagnostics for `portkit doctor` as dicts {"name", "ok", "detail"}.

    :param backend: the selected Backend instance, or None when none is available.
    """


@hookspec
def portkit_launch_env(backend, env: dict) -> dict:
    """Return environment variables to add to a launched job.

    :param backend: the Backend instance the job runs on.
    :param env: the environment built so far (read-only view; return the additions).
    """
