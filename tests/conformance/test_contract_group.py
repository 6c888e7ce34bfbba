"""The `contract` conformance group on backends defined in the test: what each breakage reports."""
import pytest

from portkit.conformance import contract as contract
from portkit.conformance.common import Context
from portkit.backend import Backend
from portkit.backends.cpu import CPUBackend


def run(cls, tmp_path):
    return contract.run(Context(backend=cls(), workdir=tmp_path))


def failed(checks):
    return {c.name: c.reason for c in checks if not c.ok}


def test_builtin_cpu_meets_the_contract(tmp_path):
    checks = run(CPUBackend, tmp_path)
    assert failed(checks) == {}
    assert len(checks) > 40  # presence, types and behaviour were all checked


def cpu_without(member, name):
    """The cpu backend's members, less one, on a direct subclass of portkit.Backend."""
    attrs = {k: v for k, v in vars(CPUBackend).items() if k not in (member, "__dict__", "__weakref__")}
    return type(name, (Backend,), attrs)


def test_inherited_dist_backend_is_named_with_the_fix(tmp_path):
    assert failed(run(cpu_without("dist_backend", "VendorBackend"), tmp_path)) == {
        "dist_backend defined": "VendorBackend does not define 'dist_backend' (it would inherit portkit.Backend's "
                                "default); set dist_backend = '<torch.distributed backend>' as a class attribute "
                                "(nccl, hccl, cncl, gloo ...)"}


def test_missing_probe_stops_the_behaviour_checks(tmp_path):
    bad = failed(run(cpu_without("probe", "NoProbe"), tmp_path))
    assert set(bad) == {"probe defined", "probe() returns None or a reason"}
    assert "define probe(self) -> str | None" in bad["probe defined"]
    assert "NotImplementedError" in bad["probe() returns None or a reason"]


@pytest.mark.parametrize("attrs, check, fragment", [
    ({"priority": "high"}, "attribute priority", "it must be int"),
    ({"comm_env": {"NCCL_X": 1}}, "attribute comm_env launch_env() maps str to str", "it must be dict[str, str]"),
    ({"manual_seed": lambda self, seed: None}, "manual_seed() reproduces random tensors", "twice gave different"),
    ({"memory_stats": lambda self, index=None: {"allocated": 1}}, "memory_stats() keys",
     "lacks peak_allocated, reserved, total"),
    ({"device": lambda self, index=None: "cpu"}, "device() is a torch.device of device_type",
     "device() returned str 'cpu', not a torch.device"),
    ({"dist_backend": "nosuchccl"}, "dist_backend known to torch.distributed", "not a torch.distributed backend"),
    ({"device_count": lambda self: 0}, "device_count() >= 1 current_device() / set_device()", "must be an int >= 1"),
    ({"probe": lambda self: "driver not loaded"}, "probe() returns None or a reason", "driver not loaded"),
])
def test_each_breakage_fails_its_own_check(tmp_path, attrs, check, fragment):
    cls = type("Broken", (CPUBackend,), dict(attrs))
    bad = failed(run(cls, tmp_path))
    names = [n for n in bad]
    assert " ".join(names) == check
    assert fragment in bad[names[0]]
