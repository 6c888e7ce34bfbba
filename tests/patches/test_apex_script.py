"""The shipped apex script (portkit/conformance/scripts/apex_train.py), moved to the CPU and
nothing else, runs with apex absent under `python -m portkit.patches.apex` and trains exactly
as the same script written with torch modules."""
import json
import subprocess
import sys

import pytest

from portkit.conformance.unchanged import APEX_EDITS, hand_edited

CPU_EDITS = [edit for edit in APEX_EDITS if ".cuda()" in edit[0]]  # the device only: the apex imports stay
ENV = {"OMP_NUM_THREADS": "1", "PATH": ""}


def _losses(cmd: list) -> list[float]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])["losses"]


def test_apex_script_runs_unchanged_and_matches_torch(tmp_path):
    script = hand_edited("apex_train.py", CPU_EDITS, tmp_path / "cpu")
    assert "from apex.optimizers import FusedAdam" in script.read_text() and "portkit" not in script.read_text()
    got = _losses([sys.executable, "-m", "portkit.patches.apex", script])
    want = _losses([sys.executable, hand_edited("apex_train.py", APEX_EDITS, tmp_path / "torch")])
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert got[-1] < got[0]


def test_apex_script_fails_clearly_without_the_shim(tmp_path):
    script = hand_edited("apex_train.py", CPU_EDITS, tmp_path)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode != 0 and "No module named 'apex'" in done.stderr
