"""Plugin discovery, backend selection and `portkit doctor`, against real entry points."""
import importlib.metadata
import json
import os
import subprocess
import sys
import types

import pytest
import torch

import portkit
from portkit import doctor, runtime
from portkit.runtime import BackendError

BUILTIN = {"cpu", "cuda", "rocm", "npu", "mlu", "xpu"}
FRAMEWORKS = ("deepspeed", "colossalai", "megatron")


def backend_source(name, priority=0, reason=None):
    """A plugin module registering one CPU-tensor backend `name`; `reason` makes it unavailable."""
    return f"""
        import portkit

        class Plugged(portkit.Backend):
            name = {name!r}
            priority = {priority}

            def probe(self):
                return {reason!r}

        @portkit.hookimpl
        def portkit_register_backends():
            return [Plugged]
    """


def errors_by_plugin():
    return {e.plugin: e for e in runtime.plugins().errors}


def installed_version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PORTKIT_BACKEND", "PORTKIT_PLUGINS")}
    return {**env, "OMP_NUM_THREADS": "1"}


def run(*argv):
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- selection ------------------------------------------------------------------------
def test_explicit_selection(fresh_runtime):
    chosen = portkit.select_backend("testvendor")
    assert chosen.name == "testvendor" and portkit.backend() is chosen
    assert portkit.device() == torch.device("cpu") and portkit.dist_backend() == "gloo"


def test_env_var_selection(fresh_runtime, monkeypatch):
    monkeypatch.setenv("PORTKIT_BACKEND", "testvendor")
    assert portkit.backend().name == "testvendor"


def test_auto_selection_takes_highest_priority_available(install_plugin):
    install_plugin("vendor-hi", "hi", "pk_vendor_hi", backend_source("hi", priority=1000))
    install_plugin("vendor-gone", "gone", "pk_vendor_gone", backend_source("gone", priority=2000, reason="no card"))
    assert portkit.select_backend().name == "hi"


def test_auto_selection_prefers_builtin_over_low_priority_vendor(fresh_runtime):
    ready = [b for b in runtime.backends().values() if b.probe() is None]
    assert {"cpu", "testvendor"} <= {b.name for b in ready}
    assert portkit.select_backend().name == max(ready, key=lambda b: b.priority).name != "testvendor"


def test_unknown_name_lists_installed(fresh_runtime):
    with pytest.raises(BackendError) as err:
        portkit.select_backend("nosuch")
    assert "'nosuch'" in str(err.value)
    assert all(name in str(err.value) for name in BUILTIN | {"testvendor"})


def test_unavailable_name_gives_reason(install_plugin):
    install_plugin("vendor-gone", "gone", "pk_vendor_gone", backend_source("gone", reason="widget driver 3.1 missing"))
    with pytest.raises(BackendError, match="'gone' is not available here: widget driver 3.1 missing"):
        portkit.select_backend("gone")
    with pytest.raises(BackendError, match="torch_npu is not installed"):
        portkit.select_backend("npu")


# -- broken and clashing plugins ------------------------------------------------------
RAISING = """
    import portkit

    @portkit.hookimpl
    def portkit_register_backends():
        raise RuntimeError("vendor SDK 9 not found")

    @portkit.hookimpl
    def portkit_doctor_checks(backend):
        raise ValueError("check crashed")
"""


def test_broken_plugins_are_reported_and_skipped(install_plugin):
    install_plugin("vendor-missing", "missing", "pk_vendor_not_there")            # module absent
    install_plugin("vendor-badimport", "badimport", "pk_vendor_badimport", "import pk_sdk_that_is_absent\n")
    install_plugin("vendor-raising", "raising", "pk_vendor_raising", RAISING)
    assert {"cpu", "testvendor"} <= set(runtime.backends())
    errors = errors_by_plugin()
    assert errors["missing"].stage == "import" and "pk_vendor_not_there" in errors["missing"].reason
    assert errors["badimport"].stage == "import" and "pk_sdk_that_is_absent" in errors["badimport"].reason
    assert errors["raising"].stage == "portkit_register_backends"
    assert errors["raising"].reason == "RuntimeError: vendor SDK 9 not found"
    report = doctor.collect()
    stages = {(e["plugin"], e["stage"]) for e in report["plugin_errors"]}
    assert {("missing", "import"), ("raising", "portkit_doctor_checks")} <= stages
    assert "testvendor" in {c["plugin"] for c in report["checks"]}  # the healthy plugin's check still ran


def test_duplicate_backend_name_names_both_plugins(install_plugin):
    install_plugin("vendor-alpha", "alpha", "pk_vendor_alpha", backend_source("widget"))
    install_plugin("vendor-beta", "beta", "pk_vendor_beta", backend_source("widget"))
    backends = runtime.backends()
    assert type(backends["widget"]).__module__ == "pk_vendor_alpha"
    err = errors_by_plugin()["beta"]
    assert "'widget'" in err.reason and "'alpha'" in err.reason


def test_duplicate_entry_point_name_names_the_first_distribution(install_plugin):
    install_plugin("vendor-one", "gamma", "pk_vendor_one", backend_source("gamma1"))
    install_plugin("vendor-two", "gamma", "pk_vendor_two", backend_source("gamma2"))
    runtime.backends()
    err = errors_by_plugin()["gamma"]
    assert err.stage == "import" and "vendor-" in err.reason


def test_allow_list_loads_only_named_plugins(fresh_runtime, monkeypatch):
    monkeypatch.setenv("PORTKIT_PLUGINS", "cpu")
    assert set(runtime.backends()) == {"cpu"}
    runtime.reset()
    monkeypatch.setenv("PORTKIT_PLUGINS", " cpu, testvendor ")
    assert set(runtime.backends()) == {"cpu", "testvendor"}
    assert portkit.select_backend().name == "cpu"


def test_allow_list_keeps_the_builtin_ops_and_patches(fresh_runtime, monkeypatch):
    monkeypatch.setenv("PORTKIT_PLUGINS", "acme")  # a vendor's backend alone: portkit's kernels and adapters stay
    assert runtime.backends() == {}
    ops = {plugin for plugin, _ in runtime.plugins().call_flat("portkit_register_ops")}
    patches = {plugin for plugin, _ in runtime.plugins().call_flat("portkit_register_patches")}
    assert ops == {"portkit.ops", "testvendor.ops"} and patches == {"portkit.patches"}
    assert runtime.plugins().errors == []


def test_a_package_registers_in_several_groups(fresh_runtime):
    groups = runtime.plugins().groups
    assert "testvendor" in groups["portkit.backends"] and groups["portkit.ops"] == ["portkit.ops", "testvendor.ops"]
    assert groups["portkit.patches"] == ["portkit.patches"]
    impl = next(i for p, i in runtime.plugins().call_flat("portkit_register_ops") if p == "testvendor.ops")
    assert impl.predicate(runtime.backends()["testvendor"]) and not impl.predicate(runtime.backends()["cpu"])


def test_backend_hooks_outside_the_backends_group_are_refused(install_plugin):
    install_plugin("vendor-mixed", "mixed", "pk_vendor_mixed", backend_source("mixed"), group="portkit.ops")
    assert "mixed" not in runtime.backends()
    err = errors_by_plugin()["mixed.ops"]
    assert "implements portkit_register_backends" in err.reason and "PORTKIT_PLUGINS" in err.reason


# -- import hygiene and doctor --------------------------------------------------------
def test_import_portkit_and_doctor_frameworks_import_no_framework():
    code = f"""
import json, sys
heavy = lambda: sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})
import portkit
after_import = heavy()
portkit.registered_backends()
from portkit import doctor
found = doctor.frameworks()
print(json.dumps({{"import": after_import, "doctor": heavy(), "found": found}}))
"""
    out = json.loads(run("-c", code))
    assert out["import"] == [] and out["doctor"] == []
    for dist in ("deepspeed", "colossalai", "megatron-core"):  # read from metadata although never imported
        assert out["found"][dist]["version"] == installed_version(dist)


def test_doctor_json_in_subprocess_lists_every_backend():
    report = json.loads(run("-m", "portkit.cli", "doctor", "--json"))
    assert set(report) >= set(doctor.KEYS)
    assert report["plugins"]["portkit.ops"] == {"portkit.ops": "portkit", "testvendor.ops": "portkit-testvendor"}
    assert report["plugins"]["portkit.patches"] == {"portkit.patches": "portkit"}
    assert report["plugins"]["portkit.backends"]["testvendor"] == "portkit-testvendor"
    rows = {b["name"]: b for b in report["backends"]}
    assert set(rows) >= BUILTIN | {"testvendor"}
    assert rows["cpu"]["available"] and rows["testvendor"]["available"]
    assert all(b["reason"] for b in rows.values() if not b["available"])
    ready = [b for b in rows.values() if b["available"]]
    assert report["selected"]["name"] == max(ready, key=lambda b: b["priority"])["name"]
    assert any(c["name"] == "testvendor.matmul" and c["ok"] for c in report["checks"])


def test_doctor_backend_option_selects_vendor(fresh_runtime, capsys):
    args = types.SimpleNamespace(json=True, backend="testvendor")
    assert doctor.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["selected"] == {"name": "testvendor", "how": "--backend", "error": None}
    check = next(c for c in report["checks"] if c["plugin"] == "testvendor")
    assert check["detail"].endswith("selected backend: testvendor")


def test_doctor_reports_impossible_selection_and_exits_zero(fresh_runtime, capsys):
    args = types.SimpleNamespace(json=False, backend="npu")
    assert doctor.main(args) == 0
    text = capsys.readouterr().out
    assert "selected: none" in text and "torch_npu is not installed" in text


def test_doctor_lists_every_registered_patch(fresh_runtime):
    from portkit import patching
    names = [p["name"] for p in doctor.patches()]
    assert names == [p.name for p in patching.all_patches()]
    assert all(p["state"] for p in doctor.patches())
