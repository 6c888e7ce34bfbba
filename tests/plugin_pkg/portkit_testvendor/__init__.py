"""A third-party backend plugin, shaped as a vendor's own package would be.

It registers the backend 'testvendor', which runs on CPU tensors under its own name, and a
`portkit doctor` check. Its priority is below the CPU backend's, so auto-selection still
picks 'cpu'; `PORTKIT_BACKEND=testvendor` or `--backend testvendor` selects it.
"""
import torch

from portkit import Backend, Capabilities, hookimpl

__all__ = ["TestVendorBackend"]


class TestVendorBackend(Backend):
    name = "testvendor"
    device_type = "cpu"           # the "device" is the host: tensors live on CPU
    dist_backend = "gloo"
    visible_devices_env = "TESTVENDOR_VISIBLE_DEVICES"
    priority = -10
    comm_env = {"TESTVENDOR_COMM_TIMEOUT": "600"}

    def probe(self):
        return None

    def device_name(self, index=0):
        return "testvendor virtual device"

    def synchronize(self):
        pass

    def memory_stats(self, index=None):
        return {"allocated": 0, "peak_allocated": 0, "reserved": 0, "total": 0}

    def reset_peak_memory(self):
        pass

    def capabilities(self):
        return Capabilities(bf16=True, fp16=True)

    def versions(self):
        return {"torch": torch.__version__, "testvendor": "0.1.0"}


@hookimpl
def portkit_register_backends():
    return [TestVendorBackend]


@hookimpl
def portkit_doctor_checks(backend):
    """A vendor's own diagnostic: can its device run a small matmul correctly?"""
    x = torch.arange(6.0).reshape(2, 3)
    ok = torch.equal(x @ x.T, torch.tensor([[5.0, 14.0], [14.0, 50.0]]))
    selected = backend.name if backend is not None else "none"
    return [{"name": "testvendor.matmul", "ok": ok, "detail": f"2x3 matmul on CPU tensors; selected backend: {selected}"}]
