"""Runs every Triton kernel test (marked `triton`) under the Triton interpreter on the CPU.

TRITON_INTERPRET=1 must be set before triton is first imported, and other tests of the
suite may import triton earlier, so the kernel tests run in a fresh pytest process.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MIN_CASES = 90  # the kernel tests that must have run, not been skipped


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="already inside the interpreter run")
def test_triton_kernels_match_the_references_under_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "triton and not gpu", "-p", "no:cacheprovider", str(HERE)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"interpreter run failed:\n{tail}"
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= MIN_CASES, f"too few kernel tests ran:\n{tail}"
    assert "skipped" not in done.stdout.splitlines()[-1], f"kernel tests were skipped:\n{tail}"
