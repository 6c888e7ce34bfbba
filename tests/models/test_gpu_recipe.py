"""The same recipe on the GPU and on the CPU, compared step by step (needs a real accelerator)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portkit import runtime
from portkit.models import compare as C
from portkit.models import recipe as R

TINY = Path(R.__file__).parent / "recipes" / "tiny.yaml"


def _gpu_backend():
    for name in ("cuda", "rocm"):
        b = runtime.backends().get(name)
        if b is not None and b.probe() is None:
            return name
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_backend() is None, reason="no GPU backend available")
def test_tiny_recipe_on_gpu_matches_cpu(tmp_path):
    outs = {}
    for backend in (_gpu_backend(), "cpu"):
        outs[backend] = tmp_path / backend
        done = subprocess.run([sys.executable, "-m", "portkit.models.runner", str(TINY), "--backend", backend,
                               "--out", str(outs[backend]), "--quiet"], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    result = C.compare(*(C.load(p) for p in outs.values()))
    assert result["stages"]["sft"]["verdict"] == "PASS", result["stages"]["sft"]["mean_rel"]
    assert result["stages"]["reward"]["verdict"] == "PASS", result["stages"]["reward"]["mean_rel"]
