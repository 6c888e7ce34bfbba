"""Megatron-core through portkit: tensor parallel 2 over gloo equals one process (real installs)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("megatron_worker.py")

pytest.importorskip("megatron.core")


def run_worker(nproc: int, tp: int, out: Path, env_extra: dict | None = None, apex_shim: bool = False) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(WORKER), "--tp", str(tp), "--steps", "3", "--out", str(out)] + (["--apex-shim"] if apex_shim else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return json.loads(out.read_text())


def assert_same_training(tp2: dict, tp1: dict) -> None:
    assert tp2["world"] == 2 and tp2["tp"] == 2 and tp1["world"] == 1
    assert len(tp2["losses"]) == 3
    assert tp2["losses"][-1] < tp2["losses"][0], f"no training progress: {tp2['losses']}"
    # Same master weights (CPU initialisation splits one full weight), same data: same losses.
    assert tp2["losses"] == pytest.approx(tp1["losses"], rel=1e-4, abs=1e-5)
    assert tp2["rng_fork_isolated"] and tp1["rng_fork_isolated"]


@pytest.fixture(scope="module")
def cpu_reference(tmp_path_factory):
    """TP=1 in one process on the CPU: the reference both CPU runs compare with."""
    return run_worker(1, 1, tmp_path_factory.mktemp("tp1") / "tp1.json", {"PORTKIT_BACKEND": "cpu"})


@pytest.mark.slow
def test_megatron_tp2_gloo_matches_single_process(tmp_path, cpu_reference):
    tp2 = run_worker(2, 2, tmp_path / "tp2.json", {"PORTKIT_BACKEND": "cpu"})
    tp1 = cpu_reference
    assert tp2["device"] == "cpu" and tp2["norm"] == "LayerNorm"  # apex absent: torch.nn.LayerNorm
    assert set(tp2["patches"].values()) == {"applied"}, tp2["patches"]
    assert_same_training(tp2, tp1)


@pytest.mark.slow
def test_megatron_tp2_with_apex_shim_matches_torch_paths(tmp_path, cpu_reference):
    """With the shim installed Megatron-core takes its apex paths (FusedLayerNorm through
    apex's FusedLayerNormAffineFunction); the shim must serve them with the same numerics."""
    shim = run_worker(2, 2, tmp_path / "shim.json", {"PORTKIT_BACKEND": "cpu"}, apex_shim=True)
    assert shim["norm"] == "FusedLayerNorm"
    assert_same_training(shim, cpu_reference)


@pytest.mark.gpu
@pytest.mark.slow
def test_megatron_tp2_nccl_matches_single_gpu(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs of one host")
    tp2 = run_worker(2, 2, tmp_path / "tp2.json")
    tp1 = run_worker(1, 1, tmp_path / "tp1.json")
    assert tp2["device"].startswith("cuda")
    assert set(tp2["patches"].values()) == {"skipped"}, "on CUDA Megatron-core runs natively"
    assert_same_training(tp2, tp1)
