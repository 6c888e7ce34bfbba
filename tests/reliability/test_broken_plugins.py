"""Broken plugin packages of each kind, installed as real distributions (a module and a
.dist-info with entry_points.txt on sys.path): none may take `portkit doctor` or `portkit run`
down, each is named with the stage it failed in, and `portkit run` says so."""
import json
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from reliability_common import TINY  # noqa: E402

from portkit import cli, runtime  # noqa: E402

BACKEND = """
    import sys
    import portkit

    class Broken(portkit.Backend):
        name = {name!r}
        priority = 10_000          # probed first by auto-selection

        def probe(self):
            {probe}

    @portkit.hookimpl
    def portkit_register_backends():
        return [Broken]
"""
# entry-point name -> (module source, the stage its failure is reported in, text the reason holds)
BROKEN = {
    "raiseimport": ("raise RuntimeError('vendor SDK 9 not found')\n", "import", "vendor SDK 9 not found"),
    "exitimport": ("import sys\nsys.exit('no licence for this node')\n", "import", "SystemExit"),
    "raiseprobe": (BACKEND.format(name="raiseprobe", probe="raise OSError('driver crashed')"), "probe",
                   "driver crashed"),
    "exitprobe": (BACKEND.format(name="exitprobe", probe="sys.exit(4)"), "probe", "SystemExit"),
    "raisehook": ("import portkit\n\n@portkit.hookimpl\ndef portkit_register_backends():\n"
                  "    raise KeyError('device table')\n", "portkit_register_backends", "device table"),
    "exithook": ("import sys, portkit\n\n@portkit.hookimpl\ndef portkit_doctor_checks(backend):\n"
                 "    sys.exit(1)\n", "portkit_doctor_checks", "SystemExit"),
}


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    for name, (source, _, _) in BROKEN.items():
        info = site / f"pk_broken_{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pk-broken-{name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[portkit.backends]\n{name} = pk_broken_{name}\n")
        (site / f"pk_broken_{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("PORTKIT_BACKEND", raising=False)
    monkeypatch.delenv("PORTKIT_PLUGINS", raising=False)
    runtime.reset()
    yield
    runtime.reset()
    for name in BROKEN:
        sys.modules.pop(f"pk_broken_{name}", None)


def test_doctor_names_every_broken_plugin_and_exits_0(broken_plugins, capsys):
    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    errors = {(e["plugin"], e["stage"]): e["reason"] for e in report["plugin_errors"]}
    for name, (_, stage, reason) in BROKEN.items():
        assert reason in errors.get((name, stage), ""), (name, stage, errors)
    assert report["selected"]["name"] == "cpu"
    available = {b["name"]: b["available"] for b in report["backends"]}
    assert available["raiseprobe"] is False and available["exitprobe"] is False and available["cpu"] is True


def test_run_goes_on_and_mentions_the_broken_plugins(broken_plugins, capsys, tmp_path):
    rc = cli.main(["run", str(TINY), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    for name, (_, stage, _) in BROKEN.items():
        if stage != "portkit_doctor_checks":  # `portkit run` calls no doctor hook
            assert f"plugin {name!r} failed in {stage} and was skipped" in err, err
    assert (tmp_path / "run" / "report.json").is_file()


def test_run_on_a_backend_whose_probe_raises_is_a_clear_error(broken_plugins, capsys, tmp_path):
    rc = cli.main(["run", str(TINY), "--out", str(tmp_path / "run"), "--backend", "raiseprobe"])
    err = capsys.readouterr().err
    assert rc == 2 and "backend 'raiseprobe' is not available here: probe() raised OSError: driver crashed" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
