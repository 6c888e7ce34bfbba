"""Tables of bad recipes, manifests, snapshots and tuning profiles. Each must give exit 2 and
one message naming the file and the key, with no traceback, nothing written outside its
root and nothing lost (the trees involved are compared byte for byte before and after)."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from reliability_common import TINY, tree  # noqa: E402

from portkit import cli  # noqa: E402

# (what is wrong, change to the tiny recipe's YAML, the key the message must name)
BAD_RECIPES = [
    ("NaN learning rate", {"sft": {"lr": float("nan")}}, "sft.lr"),
    ("infinite learning rate", {"sft": {"lr": ".inf"}}, "sft.lr"),
    ("infinite clip", {"ppo": {"clip": float("inf")}}, "ppo.clip"),
    ("negative KL coefficient", {"ppo": {"kl_coef": -1}}, "kl_coef"),
    ("gamma above 1", {"ppo": {"gamma": 2.0}}, "gamma"),
    ("zero temperature", {"ppo": {"temperature": 0}}, "temperature"),
    ("empty stage list", {"stages": []}, "stages"),
    ("absurd step count", {"sft": {"steps": 10 ** 12}}, "steps"),
    ("negative warmup", {"sft": {"warmup": -5}}, "warmup"),
    ("unknown key", {"sft": {"stepz": 3}}, "stepz"),
    ("string for a number", {"sft": {"batch_size": "eight"}}, "sft.batch_size"),
    ("checkpoint_every 0", {"checkpoint_every": 0}, "checkpoint_every"),
    ("unknown backend", {"backend": "tpu"}, "backend"),
    ("run name outside runs/", {"name": "../../escaped"}, "name"),
    ("absolute run name", {"name": "TMP/escaped"}, "name"),  # TMP: the test's own directory
    ("model too large to allocate", {"model": {"n_layer": 1, "n_head": 2, "n_embd": 2 ** 18, "block_size": 48}},
     "model"),
]


def _merge(base: dict, change: dict) -> dict:
    out = dict(base)
    for k, v in change.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.fixture
def portkit_in(monkeypatch, tmp_path, capsys):
    """`portkit ARGS` in this process from the directory tmp/work; returns (exit code, stderr)."""
    monkeypatch.setenv("PORTKIT_BACKEND", "cpu")
    monkeypatch.delenv("PORTKIT_DEBUG", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    def run(*argv):
        rc = cli.main([str(a) for a in argv])
        return rc, capsys.readouterr().err
    return run


def _refused(rc, err, file, key):
    assert rc == 2, err
    assert str(file) in err and key in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 6, err


@pytest.mark.parametrize("what,change,key", BAD_RECIPES, ids=[b[0] for b in BAD_RECIPES])
def test_bad_recipe(what, change, key, portkit_in, tmp_path):
    recipe = tmp_path / "bad.yaml"
    text = yaml.safe_dump(_merge(yaml.safe_load(TINY.read_text()), change))
    recipe.write_text(text.replace("'.inf'", ".inf").replace("TMP/", f"{tmp_path}/"))
    before = tree(tmp_path)
    rc, err = portkit_in("run", recipe, "--quiet")
    _refused(rc, err, recipe, key)
    after = tree(tmp_path)  # nothing changed, nothing written outside the run's own runs/tiny
    assert {k: v for k, v in after.items() if not k.startswith("work/runs/tiny/")} == before


def test_debug_shows_the_traceback(portkit_in, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(TINY.read_text() + "backend: tpu\n")
    rc, err = portkit_in("run", recipe, "--debug")
    assert rc == 2 and "Traceback" in err and "BackendError" in err and "unknown backend 'tpu'" in err


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, portkit_cli):
    out = tmp_path_factory.mktemp("killed") / "run"
    # killed after reward step 3 (6 sft + 3 reward steps); last checkpoint: reward step 2
    assert portkit_cli.run(out, env={"PORTKIT_KILL_AFTER_STEPS": "9"}).returncode == 137
    return out


def _entries(doc):
    return doc["entries"]


# (what is wrong, edit of the manifest's JSON text or document, the key the message must name)
BAD_MANIFESTS = [
    ("truncated", lambda text: text[:len(text) // 2], "manifest"),
    ("empty", lambda text: "", "manifest"),
    ("a list", lambda text: "[]", "manifest"),
    ("entries missing", lambda doc: {"meta": doc["meta"]}, "entries"),
    ("step a string", lambda doc: _set(doc, "step", "2"), "step"),
    ("final a number", lambda doc: _set(doc, "final", 1), "final"),
    ("negative step", lambda doc: _set(doc, "step", -2), "step"),
    ("digest not hex", lambda doc: _set(doc, "files", {"sft-000002.pt": "xyz"}), "files"),
    ("file outside the run", lambda doc: _set(doc, "files", {"../../victim.pt": "0" * 64}), "files"),
    ("step not its file's", lambda doc: _set(doc, "step", 3), "files"),
    ("unknown key", lambda doc: _set(doc, "when", "now"), "when"),
    ("model changed", lambda doc: {**doc, "meta": {**doc["meta"], "model": {**doc["meta"]["model"], "n_embd": 64}}},
     "n_embd"),
]


def _set(doc, key, value):
    doc["entries"][0][key] = value
    return doc


@pytest.mark.parametrize("what,edit,key", BAD_MANIFESTS, ids=[b[0] for b in BAD_MANIFESTS])
def test_bad_manifest(what, edit, key, killed_run, portkit_in, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    manifest = out / "checkpoints" / "manifest.json"
    text = manifest.read_text()
    try:
        manifest.write_text(edit(text))
    except TypeError:
        manifest.write_text(json.dumps(edit(json.loads(text))))
    (tmp_path / "victim.pt").write_bytes(b"not portkit's")
    before = tree(tmp_path)
    rc, err = portkit_in("run", TINY, "--out", out, "--resume", "--quiet")
    _refused(rc, err, manifest, key)
    assert tree(tmp_path) == before  # nothing lost: checkpoints, metrics and the file outside all kept


def test_deleted_manifest_keeps_the_checkpoints(killed_run, portkit_in, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    (out / "checkpoints" / "manifest.json").unlink()
    before = tree(out)
    rc, err = portkit_in("run", TINY, "--out", out, "--resume", "--quiet")
    _refused(rc, err, out / "checkpoints" / "manifest.json", "missing")
    assert tree(out) == before and len(list((out / "checkpoints").glob("*.pt"))) == 3


@pytest.mark.parametrize("damage", ["emptied", "deleted"])
def test_lost_metrics_are_not_silently_ignored(damage, killed_run, portkit_in, tmp_path):
    """A kill while resume rewrote metrics.jsonl (not atomically) left it empty, and the next
    resume went on with the lines lost for good; a deleted file went unnoticed too."""
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    (out / "metrics.jsonl").write_text("") if damage == "emptied" else (out / "metrics.jsonl").unlink()
    before = tree(out)
    rc, err = portkit_in("run", TINY, "--out", out, "--resume", "--quiet")
    _refused(rc, err, out / "metrics.jsonl", "metrics were lost")
    assert tree(out) == before


def test_resume_with_a_changed_model_names_the_key(killed_run, portkit_in, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    recipe = tmp_path / "wider.yaml"
    recipe.write_text(TINY.read_text().replace("n_embd: 32", "n_embd: 64"))
    before = tree(out)
    rc, err = portkit_in("run", recipe, "--out", out, "--resume", "--quiet")
    _refused(rc, err, out / "checkpoints" / "manifest.json", "model.n_embd: 32 then, 64 now")
    assert tree(out) == before


# -- tuning: snapshots and profiles ------------------------------------------------------
PROFILE = "description: test profile\nsysctl:\n  vm.swappiness: 10\n"


@pytest.fixture
def node(tmp_path):
    """A node root holding one sysctl file, a profile for it, a snapshot of its apply, and a
    file beside the root that no snapshot may touch."""
    root = tmp_path / "node"
    (root / "proc/sys/vm").mkdir(parents=True)
    (root / "proc/sys/vm/swappiness").write_text("60\n")
    (tmp_path / "outside").write_text("keep me\n")
    (tmp_path / "profile.yaml").write_text(PROFILE)
    return root


def _snapshot(portkit_in, node, tmp_path) -> Path:
    rc, err = portkit_in("tune", "apply", tmp_path / "profile.yaml", "--root", node, "--yes")
    assert rc == 0, err
    return next((node / "var").rglob("*.json"))


BAD_SNAPSHOTS = [
    ("path with ..", lambda d: _file(d, "path", "../outside"), "files[0].path"),
    ("absolute path", lambda d: _file(d, "path", "/etc/hostname"), "files[0].path"),
    ("exists a string", lambda d: _file(d, "exists", "yes"), "files[0].exists"),
    ("mode out of range", lambda d: _file(d, "mode", 1 << 20), "mode"),
    ("data not base64", lambda d: _file(d, "data", "***"), "files[0].data"),
    ("other version", lambda d: {**d, "version": 9}, "version"),
    ("files not a list", lambda d: {**d, "files": {}}, "files"),
]


def _file(doc, key, value):
    doc["files"][0][key] = value
    return doc


@pytest.mark.parametrize("what,edit,key", BAD_SNAPSHOTS, ids=[b[0] for b in BAD_SNAPSHOTS])
def test_bad_snapshot(what, edit, key, node, portkit_in, tmp_path):
    snap = _snapshot(portkit_in, node, tmp_path)
    snap.write_text(json.dumps(edit(json.loads(snap.read_text()))))
    before = tree(tmp_path)
    rc, err = portkit_in("tune", "rollback", snap, "--root", node)
    _refused(rc, err, snap, key)
    assert tree(tmp_path) == before  # the root and the file beside it untouched


def test_truncated_snapshot(node, portkit_in, tmp_path):
    snap = _snapshot(portkit_in, node, tmp_path)
    snap.write_text(snap.read_text()[:40])
    before = tree(tmp_path)
    rc, err = portkit_in("tune", "rollback", snap, "--root", node)
    _refused(rc, err, snap, "not valid JSON")
    assert tree(tmp_path) == before


BAD_PROFILES = [
    ("unknown sysctl", "sysctl:\n  vm.swapiness: 10\n", "vm.swapiness"),
    ("value out of range", "sysctl:\n  vm.swappiness: 1000\n", "vm.swappiness"),
    ("wrong type", "sysctl:\n  vm.swappiness: [1, 2]\n", "vm.swappiness"),
    ("unknown section", "sysctls:\n  vm.swappiness: 10\n", "sysctls"),
    ("extends a missing profile", "extends: nosuch\nsysctl:\n  vm.swappiness: 10\n", "nosuch"),
    ("not a mapping", "- just\n- a list\n", "mapping"),
]


@pytest.mark.parametrize("what,text,key", BAD_PROFILES, ids=[b[0] for b in BAD_PROFILES])
@pytest.mark.parametrize("action", ["plan", "apply"])
def test_bad_profile(what, text, key, action, node, portkit_in, tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text("description: bad\n" + text if not text.startswith("-") else text)
    before = tree(tmp_path)
    rc, err = portkit_in("tune", action, profile, "--root", node, *(["--yes"] if action == "apply" else []))
    _refused(rc, err, profile, key)
    assert tree(tmp_path) == before


def test_unknown_backend_flag(portkit_in, tmp_path):
    rc, err = portkit_in("run", TINY, "--backend", "tpu", "--out", tmp_path / "run")
    assert rc == 2 and "--backend: unknown backend 'tpu'; allowed: " in err and "cpu" in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
