"""AMD ROCm and the ROCm-derived Sugon/Hygon DCU (DTK): device 'cuda', RCCL as 'nccl'.

ROCm PyTorch presents the device as 'cuda' and reuses torch.cuda; it is told apart from
CUDA by torch.version.hip. Two flavours share this backend: 'amd' (rocm-smi) and 'dcu'
(hy-smi, toolkit DTK under /opt/dtk with env.sh, HAL under /opt/hyhal).
"""
from __future__ import annotations

import glob
import os
import re
import shutil

import torch

from portkit.backend import Backend, Capabilities, has_module, search, smi_text
from portkit.backends._common import NCCL_SAFE_ENV
from portkit.hookspecs import hookimpl

HYHAL_DIR = "/opt/hyhal"          # mounted into DCU containers; holds bin/hy-smi
DTK_GLOB = "/opt/dtk*"            # /opt/dtk or /opt/dtk-VERSION
SYSTEM_ROOT = "/"                 # where /proc is read for the readiness report (tests: a simulated tree)
DCU_MODELS = ("Z100", "K100", "BW1000")  # "K100" also matches K100-AI and K100_AI
FP8_ARCHS = ("gfx942", "gfx950")             # MI300 / MI350 series
FLASH_ARCHS = ("gfx90a", "gfx942", "gfx950")  # ROCm flash-attention (CK) targets MI200 / MI300 / MI350


def rocm_probe() -> str | None:
    """None when an AMD GPU or DCU is usable through this torch, else why not."""
    if torch.version.hip is None:
        return f"torch {torch.__version__} is not a ROCm build (torch.version.hip is None)"
    if not torch.cuda.is_available():
        return (f"torch.cuda.is_available() is False on this ROCm build (HIP {torch.version.hip}): "
                "no device visible; check /dev/kfd and /dev/dri (/dev/mkfd and /opt/hyhal on DCU) "
                "and HIP_VISIBLE_DEVICES")
    return None


def dcu_evidence(device_name: str | None) -> str | None:
    """Why this machine looks like a Sugon/Hygon DCU, or None when it does not."""
    if shutil.which("hy-smi"):
        return "hy-smi on PATH"
    if os.path.isdir(HYHAL_DIR):
        return f"{HYHAL_DIR} exists"
    if device_name and any(m.lower() in device_name.lower() for m in DCU_MODELS):
        return f"device name {device_name!r} is a DCU model"
    return None


def find_dtk() -> dict | None:
    """The DTK install ($DTK, else $ROCM_PATH, else the newest /opt/dtk*): path, version, env.sh."""
    candidates = [os.environ.get("DTK"), os.environ.get("ROCM_PATH"), *sorted(glob.glob(DTK_GLOB), reverse=True)]
    for path in filter(None, candidates):
        if os.path.isdir(path):
            return {"path": path, "version": dtk_version(path),
                    "env_sh": os.path.isfile(os.path.join(path, "env.sh"))}
    return None


def dtk_version(path: str) -> str | None:
    """From .info/version (as in ROCm), else from a directory named dtk-VERSION."""
    info = os.path.join(path, ".info", "version")
    if os.path.isfile(info):
        with open(info) as f:
            return f.read().strip() or None
    return search(r"dtk-([\w.\-]+)$", os.path.basename(os.path.realpath(path)))


def parse_hy_smi_table(text: str | None) -> list[dict[str, str]]:
    """Rows of hy-smi's default table (columns DCU, Temp, AvgPwr, Perf, PwrCap, VRAM%, DCU% ...)."""
    rows: list[dict[str, str]] = []
    header = None
    for cells in (line.split() for line in (text or "").splitlines()):
        if header is None and cells[:1] in (["DCU"], ["HCU"]) and "Temp" in cells:
            header = cells
        elif header and cells and cells[0].isdigit() and len(cells) >= len(header):
            rows.append(dict(zip(header, cells)))
    return rows


class ROCmBackend(Backend):
    name = "rocm"
    device_type = "cuda"
    dist_backend = "nccl"  # RCCL answers to the nccl name on ROCm
    visible_devices_env = "HIP_VISIBLE_DEVICES"
    priority = 100
    # RCCL warns at init without fine-grained PCIe memory and may run slowly or hang
    # (ROCm/rccl src/init.cc); the NCCL error-handling default applies to RCCL too.
    comm_env = {"HSA_FORCE_FINE_GRAIN_PCIE": "1", **NCCL_SAFE_ENV}
    # Dense bf16 peaks from AMD's Instinct datasheets. DCU models (K100-AI, BW1000) are
    # left out: no public dense-bf16 figure was found, so MFU reports None there.
    peak_tflops_bf16 = {"MI325X": 1307.4, "MI300X": 1307.4, "MI250X": 383.0, "MI250": 362.1, "MI210": 181.0}

    def probe(self):
        return rocm_probe()

    def flavour(self) -> str:
        name = self.device_name(0) if self.probe() is None else None
        return "dcu" if dcu_evidence(name) else "amd"

    @property
    def smi_tool(self):  # depends on the flavour, so computed rather than a class attribute
        return "hy-smi" if self.flavour() == "dcu" else "rocm-smi"

    def find_smi(self):
        if self.smi_tool == "rocm-smi":
            return shutil.which("rocm-smi")
        hal = os.path.join(HYHAL_DIR, "bin", "hy-smi")
        return shutil.which("hy-smi") or (hal if os.access(hal, os.X_OK) else None) or shutil.which("rocm-smi")

    def arch(self) -> str:
        """gfx architecture of the current device, e.g. gfx942 (without feature flags)."""
        props = torch.cuda.get_device_properties(self.current_device())
        return getattr(props, "gcnArchName", "").split(":")[0]

    def capabilities(self):
        arch = self.arch()
        # DTK ships its own flash-attn build for DCU; there the package's presence decides.
        flash = arch in FLASH_ARCHS or (self.flavour() == "dcu" and has_module("flash_attn"))
        return Capabilities(bf16=torch.cuda.is_bf16_supported(), fp16=True, fp8=arch in FP8_ARCHS,
                            flash_attention=flash, triton=has_module("triton"))

    def versions(self):
        out = smi_text(self, "--showdriverversion")
        found = {"torch": torch.__version__, "hip": torch.version.hip,
                 "driver": search(r"Driver version\s*:\s*(\S+)", out)}
        if self.flavour() == "dcu":
            found["dtk"] = (find_dtk() or {}).get("version")
        return found

    def describe(self):
        info = super().describe()
        info["flavour"] = self.flavour()
        info["flavour_evidence"] = dcu_evidence((info.get("devices") or [None])[0])
        if info["flavour"] == "dcu":
            info["dtk"] = find_dtk()
            if info["available"] and info["smi_found"]:
                info["smi_products"] = self.products()
                info["smi_devices"] = parse_hy_smi_table(smi_text(self))  # empty from rocm-smi
        return info

    def readiness(self) -> dict:
        """`portkit doctor`'s readiness section: DTK, hy-smi, RCCL settings, kernels, op fallbacks."""
        from portkit.backends import _rocm_readiness
        return _rocm_readiness.report(self, SYSTEM_ROOT)

    def products(self) -> list[str]:
        """Card series per device as the SMI tool reports them (e.g. K100_AI)."""
        out = smi_text(self, "--showproductname") or ""
        return [s.strip() for s in re.findall(r"Card Series\s*:\s*(.+)", out, re.IGNORECASE)]


@hookimpl
def portkit_register_backends():
    return [ROCmBackend]
