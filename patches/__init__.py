"""Built-in framework adapters, registered through the same plugin door as a vendor's.

Each module here defines `PATCHES: list[portkit.patching.Patch]` and imports its framework
only inside the patch functions, so listing patches never imports a framework.
"""
import importlib

from portkit.hookspecs import hookimpl

MODULES = ["deepspeed", "colossalai", "megatron", "apex", "torch_cuda"]


@hookimpl
def portkit_register_patches():
    return [p for name in MODULES for p in importlib.import_module(f"portkit.patches.{name}").PATCHES]
