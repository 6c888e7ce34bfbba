"""Built-in framework adapters, registered through the same plugin door as a vendor's.

Each module here defines `PATCHES: list[portkit.patching.Patch]` and imports its framework
only inside the patch functions, so listing patches never imports a framework.
"""
import importlib

from portkit.hookspecs import hookimpl

MODULES = ["deepspeed", "colossalai", "megatron", "apex", "torch_cuda"]


@hookimpl
def portkit_register_patches():
    patches = []
    for name in MODULES:
        try:
            mod = importlib.import_module(f"portkit.patches.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"portkit.patches.{name}":
                raise
            continue  # adapter module not present in this build
        patches.extend(mod.PATCHES)
    return patches
