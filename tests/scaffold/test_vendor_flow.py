"""The vendor's path end to end, in subprocesses as a vendor runs it: scaffold a plugin,
install it (pip --target, the shared environment stays untouched), see it in
`portkit doctor`, certify it with `portkit conformance`; then break it on purpose and
check that exactly the broken group fails, with a message that says what to fix."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NAME = "acme"
FAST_GROUPS = "contract,ops,collectives,checkpoint"  # every group that a broken plugin could affect cheaply


def portkit(*args: str, site: Path | None = None, cwd: Path | None = None, timeout: int = 600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PORTKIT_BACKEND", None)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "portkit.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def scaffold_and_install(root: Path, edit=None) -> Path:
    """Scaffold `acme` (device type npu) under root, apply `edit` to its module, install it
    into root/site as pip would install a vendor's package; returns root/site."""
    done = portkit("new-backend", NAME, "--device-type", "npu", "--out", str(root / "pkg"))
    assert done.returncode == 0, done.stderr
    module = root / "pkg" / f"portkit_{NAME}" / "__init__.py"
    if edit is not None:
        text = module.read_text()
        module.write_text(edit(text))
        assert module.read_text() != text, "the edit changed nothing"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(root / "site"), str(root / "pkg")],
                   check=True, capture_output=True, timeout=300)
    return root / "site"


def conformance(site: Path, out: Path, backend: str = NAME, groups: str | None = None) -> tuple[int, dict]:
    args = ["conformance", "--backend", backend, "--json-out", str(out)] + (["--groups", groups] if groups else [])
    done = portkit(*args, site=site)
    assert out.exists(), done.stdout + done.stderr
    return done.returncode, json.loads(out.read_text())


def failures(report: dict) -> dict[str, list[str]]:
    return {g: [f"{c['name']}: {c['reason']}" for c in r["checks"] if not c["ok"]]
            for g, r in report["groups"].items() if not r["passed"]}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    return scaffold_and_install(tmp_path_factory.mktemp("vendor"))


def test_scaffolded_backend_shows_up_in_doctor(installed):
    done = portkit("doctor", "--json", site=installed)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    acme = next(b for b in report["backends"] if b["name"] == NAME)
    assert acme["available"] and acme["device_type"] == "cpu" and acme["priority"] == -1
    assert "CPU stand-in" in acme["versions"]["mode"]
    assert report["selected"]["name"] != NAME  # a stand-in never wins auto-selection
    assert not [e for e in report["plugin_errors"] if e["plugin"] == NAME]


def test_scaffolded_backend_passes_every_group(installed, tmp_path):
    rc, report = conformance(installed, tmp_path / "acme.json")
    assert failures(report) == {} and rc == 0
    assert list(report["groups"]) == ["contract", "ops", "collectives", "deepspeed", "colossalai", "recipe",
                                      "checkpoint"]
    ops = [c["name"] for c in report["groups"]["ops"]["checks"]]
    assert "rms_norm_fwd [acme.rms_norm_fwd]" in ops  # the scaffold's example kernel was certified


def test_generated_test_suite_runs_against_the_installed_plugin(installed):
    env = dict(os.environ, PYTHONPATH=str(installed))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "selectable",
                           str(installed.parent / "pkg" / "tests")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "1 passed, 1 deselected" in done.stdout, done.stdout + done.stderr


def test_missing_member_fails_only_the_contract(tmp_path):
    site = scaffold_and_install(tmp_path, lambda t: t.replace(
        '    dist_backend = DIST_BACKEND if HARDWARE_READY else "gloo"\n', ""))
    rc, report = conformance(site, tmp_path / "r.json", groups=FAST_GROUPS)
    assert rc == 1
    assert failures(report) == {"contract": [
        "dist_backend defined: AcmeBackend does not define 'dist_backend' (it would inherit portkit.Backend's "
        "default); set dist_backend = '<torch.distributed backend>' as a class attribute (nccl, hccl, cncl, gloo ...)"]}


def test_wrong_op_fails_only_the_ops_group(tmp_path):
    site = scaffold_and_install(tmp_path, lambda t: t.replace(
        "    return y.to(x.dtype), rstd\n", "    return (x * 2).to(x.dtype), rstd\n"))
    rc, report = conformance(site, tmp_path / "r.json", groups=FAST_GROUPS)
    assert rc == 1
    bad = failures(report)
    assert list(bad) == ["ops"]
    assert bad["ops"][0].startswith("rms_norm_fwd [acme.rms_norm_fwd]: op rms_norm_fwd on shape (3, 16) float32: "
                                    "output 0 max abs error")
    assert "fix 'acme.rms_norm_fwd'" in bad["ops"][0]
    assert any(m.startswith("portkit.ops.rms_norm forward+backward: op rms_norm forward") for m in bad["ops"])


def test_builtin_cpu_passes(tmp_path):
    rc, report = conformance(None, tmp_path / "cpu.json", backend="cpu")
    assert failures(report) == {} and rc == 0


def test_unknown_backend_lists_the_installed_ones(tmp_path):
    done = portkit("conformance", "--backend", "nosuch")
    assert done.returncode == 2
    assert "no backend named 'nosuch' is installed (installed: " in done.stderr and "cpu" in done.stderr


@pytest.mark.gpu
def test_cuda_passes_every_group(tmp_path):
    rc, report = conformance(None, tmp_path / "cuda.json", backend="cuda")
    assert failures(report) == {} and rc == 0
