"""`portkit new-backend`: name validation, the files it writes, the CPU stand-in it generates."""
import argparse
import importlib.util
import sys

import pytest

from portkit.scaffold import cli as scaffold
from portkit.scaffold.cli import ScaffoldError, make_spec, write_package


@pytest.mark.parametrize("name, fragment", [
    ("Acme", "lowercase Python identifier"),
    ("9acme", "lowercase Python identifier"),
    ("acme-npu", "lowercase Python identifier"),
    ("class", "lowercase Python identifier"),
    ("cpu", "built-in portkit plugin name"),
    ("cuda", "built-in portkit plugin name"),
    ("ops", "built-in portkit plugin name"),
])
def test_bad_names_are_refused_with_the_fix(name, fragment):
    with pytest.raises(ScaffoldError, match=fragment):
        make_spec(name, None, None)


def test_known_device_types_fill_in_their_facts():
    spec = make_spec("acme", "npu", None)
    assert (spec.dist_backend, spec.torch_extension, spec.visible_devices_env) == \
        ("hccl", "torch_npu", "ASCEND_RT_VISIBLE_DEVICES")
    assert make_spec("acme", None, None).dist_backend == "gloo"
    assert make_spec("acme", "mlu", "mydist").dist_backend == "mydist"


def test_unknown_device_type_needs_a_dist_backend():
    with pytest.raises(ScaffoldError, match="pass --dist-backend"):
        make_spec("acme", "gpx", None)
    assert make_spec("acme", "gpx", "gpxccl").torch_extension is None


def test_package_files_are_complete_and_filled(tmp_path):
    files = write_package(make_spec("acme_npu", "npu", None), tmp_path / "pkg")
    assert sorted(p.relative_to(tmp_path / "pkg").as_posix() for p in files) == [
        "README.md", "portkit_acme_npu/__init__.py", "pyproject.toml", "tests/test_conformance.py"]
    keys = make_spec("acme_npu", "npu", None).values()
    for path in files:
        text = path.read_text()
        assert not [k for k in keys if "{" + k + "}" in text], path
        if path.suffix == ".py":
            compile(text, str(path), "exec")
    pyproject = (tmp_path / "pkg" / "pyproject.toml").read_text()
    assert '[project.entry-points."portkit.backends"]\nacme_npu = "portkit_acme_npu"' in pyproject
    assert 'name = "portkit-acme_npu"' in pyproject
    module = (tmp_path / "pkg" / "portkit_acme_npu" / "__init__.py").read_text()
    assert "class AcmeNpuBackend(portkit.Backend):" in module
    assert 'DEVICE_TYPE = "npu"' in module and 'TORCH_EXTENSION = "torch_npu"' in module


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="not empty"):
        write_package(make_spec("acme", None, None), tmp_path)


def test_cli_reports_the_error_and_exits_2(tmp_path, capsys):
    p = argparse.ArgumentParser()
    scaffold.configure(p)
    assert scaffold.main(p.parse_args(["cpu", "--out", str(tmp_path / "x")])) == 2
    assert "built-in portkit plugin name" in capsys.readouterr().err
    assert scaffold.main(p.parse_args(["acme", "--device-type", "npu", "--out", str(tmp_path / "x")])) == 0
    assert "pip install -e" in capsys.readouterr().out


def load_generated(tmp_path, ready: bool):
    write_package(make_spec("acme", "npu", None), tmp_path / "pkg")
    path = tmp_path / "pkg" / "portkit_acme" / "__init__.py"
    if ready:
        path.write_text(path.read_text().replace("HARDWARE_READY = False", "HARDWARE_READY = True"))
    spec = importlib.util.spec_from_file_location(f"portkit_acme_{ready}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.AcmeBackend


def test_generated_backend_is_a_cpu_stand_in_until_flipped(tmp_path):
    b = load_generated(tmp_path, ready=False)()
    assert (b.probe(), b.device_type, b.dist_backend, b.priority) == (None, "cpu", "gloo", -1)
    assert b.device().type == "cpu" and b.device_count() == 1
    assert "CPU stand-in" in b.versions()["mode"]


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed here")
def test_flipped_backend_without_its_extension_says_why(tmp_path):
    cls = load_generated(tmp_path / "ready", ready=True)
    assert (cls.device_type, cls.dist_backend, cls.torch_extension) == ("npu", "hccl", "torch_npu")
    assert cls().probe() == "torch_npu is not installed; install the torch extension of the device"
    assert "torch_npu" not in sys.modules
