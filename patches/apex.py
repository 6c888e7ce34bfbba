"""The apex shim: where NVIDIA apex is absent, `import apex...` is answered by portkit.

    import portkit.patches.apex as apex_shim
    apex_shim.install()      # then: from apex.optimizers import FusedAdam ... run unchanged
    apex_shim.uninstall()

or, for a script that must stay as it is:  python -m portkit.patches.apex train.py ARGS...

`install()` enables the patch "apex.shim" (framework 'apex'), which puts a meta-path
finder first on sys.meta_path. The finder answers the names in SERVED with fresh modules
whose contents come from portkit.patches.apex_shim (backed by portkit.ops, with apex's
signatures and numerics); any other `apex.*` name raises ModuleNotFoundError saying what
to use instead. Names apex has but the shim does not serve raise ImportError naming them.

Gating: the shim imitates apex's Python API on top of torch, so it is version-gated on
torch (`gate="torch"`, TORCH_VERSIONS), and it is needed only where NVIDIA apex is not
installed (`needed`: with real apex the patch is 'skipped' and the real one is imported).

Installing is always explicit (a strategy or a call), never triggered by what is
installed. Megatron-core checks a bare `import apex` when its modules are imported and then
takes apex paths; the shim serves those (patches/megatron.py says which). Modules that
imported shim names keep them after `uninstall()`.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

from portkit import patching
from portkit.patching import Patch
from portkit.patches.torch_cuda import TORCH_VERSIONS

SHIM = "portkit.patches.apex_shim"
NORM, OPT, MT, KERN = f"{SHIM}.normalization", f"{SHIM}.optimizers", f"{SHIM}.multi_tensor", f"{SHIM}.kernels"

_NORM_NAMES = ("FusedLayerNorm FusedRMSNorm MixedFusedLayerNorm MixedFusedRMSNorm "
               "FusedLayerNormAffineFunction FusedLayerNormAffineMixedDtypesFunction FusedLayerNormFunction "
               "FusedRMSNormAffineFunction FusedRMSNormFunction fused_layer_norm_affine fused_layer_norm "
               "mixed_dtype_fused_layer_norm_affine fused_rms_norm_affine fused_rms_norm "
               "mixed_dtype_fused_rms_norm_affine")
_LN_KERNEL = ("forward_affine forward_affine_mixed_dtypes forward backward_affine backward rms_forward_affine "
              "rms_forward_affine_mixed_dtypes rms_forward rms_backward_affine rms_backward")

# apex name -> (package?, source module, "name" or "exported=source_name" ...)
SERVED: dict[str, tuple[bool, str, str]] = {
    "apex": (True, SHIM, ""),
    "apex.optimizers": (True, OPT, "FusedAdam FusedSGD"),
    "apex.optimizers.fused_adam": (False, OPT, "FusedAdam"),
    "apex.optimizers.fused_sgd": (False, OPT, "FusedSGD"),
    "apex.normalization": (True, NORM, _NORM_NAMES),
    "apex.normalization.fused_layer_norm": (False, NORM, _NORM_NAMES),
    "apex.contrib": (True, SHIM, ""),
    "apex.contrib.layer_norm": (True, NORM, "FastLayerNorm FastLayerNormFN"),
    "apex.contrib.layer_norm.layer_norm": (False, NORM, "FastLayerNorm FastLayerNormFN"),
    "apex.multi_tensor_apply": (True, MT, "multi_tensor_applier MultiTensorApply"),
    "apex.multi_tensor_apply.multi_tensor_apply": (False, MT, "MultiTensorApply"),
    "amp_C": (False, MT, "multi_tensor_scale multi_tensor_l2norm multi_tensor_axpby multi_tensor_adam"),
    "fused_layer_norm_cuda": (False, KERN, _LN_KERNEL),
    "fused_mix_prec_layer_norm_cuda": (False, KERN, "forward_affine=mix_prec_forward_affine "
                                                    "backward_affine=mix_prec_backward_affine"),
    "scaled_masked_softmax_cuda": (False, KERN, "forward=masked_softmax_forward backward=softmax_backward "
                                                "get_batch_per_block"),
    "scaled_upper_triang_masked_softmax_cuda": (False, KERN, "forward=upper_triang_softmax_forward "
                                                             "backward=softmax_backward"),
    "scaled_softmax_cuda": (False, KERN, "forward=softmax_forward backward=softmax_backward"),
    "fused_weight_gradient_mlp_cuda": (False, KERN, "wgrad_gemm_accum_fp32 wgrad_gemm_accum_fp16"),
}

# What apex has and the shim does not serve, with what to use instead: modules, then names.
UNSERVED = {
    "apex.amp": "use torch.amp (autocast and GradScaler)",
    "apex.parallel": "use torch.nn.parallel.DistributedDataParallel and torch.nn.SyncBatchNorm",
    "apex.fp16_utils": "use torch.amp and fp32 master weights (portkit.ops.FusedAdamW(master_weights=True))",
    "apex.transformer": "use Megatron-core's tensor_parallel and pipeline_parallel",
    "apex.contrib.nccl_allocator": "leave Megatron's nccl_ub off (it needs NCCL user buffers)",
}
UNSERVED_NAMES = {
    "apex.optimizers.FusedLAMB": "use portkit.ops.FusedAdamW or torch.optim",
    "apex.optimizers.FusedNovoGrad": "use portkit.ops.FusedAdamW or torch.optim",
    "apex.optimizers.FusedMixedPrecisionLamb": "use portkit.ops.FusedAdamW(master_weights=True)",
    "apex.optimizers.FusedAdagrad": "use torch.optim.Adagrad",
}


def _unserved_message(name: str) -> str:
    why = next((hint for key, hint in {**UNSERVED, **UNSERVED_NAMES}.items() if name == key or name.startswith(key + ".")),
               "the shim serves: " + ", ".join(sorted(SERVED)))
    return f"{name} is not served by portkit's apex shim (NVIDIA apex is not installed): {why}"


class _ShimLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        package, source, names = SERVED[module.__name__]
        src = importlib.import_module(source)
        for item in names.split():
            exported, _, inner = item.partition("=")
            setattr(module, exported, getattr(src, inner or exported))
        module.__doc__ = f"portkit's stand-in for {module.__name__} (from {source})"
        module.__portkit_shim__ = True
        module.__getattr__ = _module_getattr(module.__name__, package)


def _module_getattr(name: str, package: bool):
    def __getattr__(attr: str):
        full = f"{name}.{attr}"
        if full in UNSERVED_NAMES:  # `from apex.optimizers import FusedLAMB` says why
            raise ImportError(_unserved_message(full), name=full)
        if package and full in SERVED:
            return importlib.import_module(full)  # `import apex; apex.optimizers.FusedAdam`
        # an AttributeError keeps hasattr(apex, "amp") False, as code probing apex expects
        raise AttributeError(_unserved_message(full) if full in UNSERVED else
                             f"module {name!r} (portkit's apex shim) has no attribute {attr!r}")
    return __getattr__


class ApexShimFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname in SERVED:
            is_pkg = SERVED[fullname][0]
            return importlib.machinery.ModuleSpec(fullname, _LOADER, is_package=is_pkg)
        if fullname.startswith("apex."):
            # name=None for what apex has (apex.amp ...): `from apex import amp` then shows this
            # message instead of importlib's "cannot import name 'amp'" (it swallows name == fullname)
            known = any(fullname == k or fullname.startswith(k + ".") for k in UNSERVED)
            raise ModuleNotFoundError(_unserved_message(fullname), name=None if known else fullname)
        return None


_LOADER = _ShimLoader()
_FINDER = ApexShimFinder()


def real_apex_location() -> str | None:
    """Where NVIDIA apex is installed (a package with apex/normalization), else None."""
    spec = None if _FINDER in sys.meta_path else importlib.util.find_spec("apex")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isdir(os.path.join(loc, "normalization")):
            return loc
    return None


def _needed() -> str | None:
    where = real_apex_location()
    return None if where is None else f"NVIDIA apex is installed at {where}: the real one is used"


def _install(module) -> None:
    for name in SERVED:
        sys.modules.pop(name, None)  # e.g. an unrelated package named apex imported before
    sys.meta_path.insert(0, _FINDER)


def _uninstall(module) -> None:
    sys.meta_path.remove(_FINDER)
    for name in list(SERVED):
        if getattr(sys.modules.get(name), "__portkit_shim__", False):
            del sys.modules[name]


PATCHES = [
    Patch(name="apex.shim", framework="apex", gate="torch", versions=TORCH_VERSIONS, target=__name__,
          description="answers `import apex` and apex's CUDA extensions with portkit.ops where NVIDIA apex is absent",
          apply=_install, undo=_uninstall, needed=_needed),
]


def install() -> list[Patch]:
    """Install the shim (state 'skipped' where NVIDIA apex is installed)."""
    return patching.enable("apex")


def uninstall() -> None:
    patching.disable("apex")


def installed() -> bool:
    return _FINDER in sys.meta_path


def run_script(argv: list[str]) -> None:
    """`python -m portkit.patches.apex SCRIPT [ARGS...]`: run an apex-using script unchanged."""
    import runpy

    if not argv:
        raise SystemExit("usage: python -m portkit.patches.apex SCRIPT [ARGS...]")
    install()
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    run_script(sys.argv[1:])
