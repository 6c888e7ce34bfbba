"""Cambricon MLU: device 'mlu' (added by torch_mlu), CNCL, cnmon."""
from __future__ import annotations

from portkit.backend import ExtensionBackend
from portkit.hookspecs import hookimpl


class MLUBackend(ExtensionBackend):
    name = "mlu"
    device_type = "mlu"
    dist_backend = "cncl"
    visible_devices_env = "MLU_VISIBLE_DEVICES"
    priority = 85
    smi_tool = "cnmon"
    torch_extension = "torch_mlu"
    install_hint = "Cambricon's PyTorch adapter, installed with the Cambricon PyTorch release for this torch"
    unavailable_hint = "no Cambricon MLU visible; check `cnmon`, the Neuware environment and MLU_VISIBLE_DEVICES"
    smi_version_args = ()
    smi_version_pattern = r"Driver\s*:?\s*v?(\d[\w.\-]*)"  # cnmon header: "CNMON v5.10.22 ... Driver v5.10.22"
    # No peak table: Cambricon publishes no dense-bf16 figure we could confirm, so MFU is None.


@hookimpl
def portkit_register_backends():
    return [MLUBackend]
