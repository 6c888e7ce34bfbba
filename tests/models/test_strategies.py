"""Every strategy of a recipe in a 2-process gloo run (torchrun) on the tiny recipe, checked
against the single-process run of the same recipe."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from portkit.models import compare as C
from portkit.models import recipe as R

TINY = Path(R.__file__).parent / "recipes" / "tiny.yaml"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A worker that finished its work can still abort in gloo's teardown at exit on the 2-core
# CI machine (seen once in ZeRO-1 and Colossal-AI runs, not reproduced on rerun): run again.
TEARDOWN_ABORT = "terminate called without an active exception"


def run(recipe, out, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PORTKIT_BACKEND": "cpu", "PYTHONFAULTHANDLER": "1",
           "TORCH_EXTENSIONS_DIR": str(Path(out).parent / "ext")}
    for _ in range(2):
        launch = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={_free_port()}", "-m"] if nproc > 1 else [sys.executable, "-m"])
        done = subprocess.run([*launch, "portkit.models.runner", str(recipe), "--out", str(out), "--quiet"],
                              capture_output=True, text=True, env=env, timeout=600)
        if done.returncode == 0 or TEARDOWN_ABORT not in done.stderr:
            break
        shutil.rmtree(out, ignore_errors=True)  # a rerun must not resume the aborted one
    return done


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    done = run(TINY, out, 1)
    assert done.returncode == 0, done.stderr
    return out


def variant(tmp_path, strategy: str, extra: str = "") -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(TINY.read_text() + f"strategy: {strategy}\n" + extra)
    return p


CASES = {  # name -> (strategy, extra recipe lines, tolerance of the sft/reward losses against one process)
    "ddp": ("{name: ddp}", "", 0.02),
    "deepspeed_zero1": ("{name: deepspeed, zero_stage: 1}", "checkpoint_every: 1000\n", 0.02),
    "deepspeed_zero2": ("{name: deepspeed, zero_stage: 2}", "checkpoint_every: 1000\n", 0.02),
    "deepspeed_zero3": ("{name: deepspeed, zero_stage: 3}", "checkpoint_every: 1000\n", 0.02),
    "megatron_tp2": ("{name: megatron, tp: 2}", "", 1e-4),
    "colossalai_ddp": ("{name: colossalai, plugin: ddp}", "", 0.02),
    "colossalai_zero2": ("{name: colossalai, plugin: zero2}", "checkpoint_every: 1000\n", 0.02),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_strategy_two_processes_gloo(case, single, tmp_path):
    strategy, extra, tol = CASES[case]
    out = tmp_path / "run"
    done = run(variant(tmp_path, strategy, extra), out, 2)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows].count("ppo") == 3
    result = C.compare(C.load(single), C.load(out), tolerance=tol)
    for stage in ("sft", "reward"):
        assert result["stages"][stage]["verdict"] == "PASS", (stage, result["stages"][stage]["mean_rel"])
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["strategy"] == case.split("_")[0]
