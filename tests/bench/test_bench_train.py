"""`portkit bench train --quick` through the CLI on the CPU: the JSON it writes and its numbers."""
import json
import math
import os
import subprocess
import sys

import pytest

from portkit.bench import train as bench

ALL = ",".join(bench.VARIANTS)


def _run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PORTKIT_BACKEND": "cpu"}
    return subprocess.run([sys.executable, "-m", "portkit.cli", "bench", "train", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_train")
    out = tmp / "train.json"
    done = _run(["--quick", "--ppo", "--variants", ALL, "--compile-backend", "aot_eager", "--backend", "cpu",
                 "--json-out", str(out)], tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_quick_run_writes_the_schema(report):
    r, _ = report
    assert r["schema"] == bench.SCHEMA
    for key in ("date", "command", "backend", "device", "torch", "flops_formula", "config", "results", "overhead"):
        assert r[key], key
    assert r["backend"] == "cpu" and r["peak_bf16_tflops"] is None
    assert "--quick" in r["command"] and "--ppo" in r["command"]


def test_every_variant_has_a_finite_throughput(report):
    r, stdout = report
    assert [x["variant"] for x in r["results"]] == list(bench.VARIANTS)
    for x in r["results"]:
        assert x["error"] is None, x
        assert math.isfinite(x["tokens_per_s"]) and x["tokens_per_s"] > 0, x
        assert math.isfinite(x["final_loss"]), x
        assert x["mfu"] is None and x["peak_bytes"] is None  # the CPU has neither
        assert x["variant"] in stdout
    by = {x["variant"]: x for x in r["results"]}
    assert by["portkit-reference"]["ops_mode"] == "reference" and by["portkit"]["ops_mode"] != "reference"
    assert by["portkit"]["params"] == by["native-eager"]["params"]  # the same model in both codes


def test_overhead_and_ppo_are_reported(report):
    r, _ = report
    (o,) = r["overhead"]
    assert o["peer"] == "native-bf16" and math.isfinite(o["overhead_pct"])
    ppo = r["ppo"]
    assert ppo["error"] is None
    assert ppo["generated_tokens_per_s"] > 0 and ppo["update_ms"] > 0


def test_flops_per_token_counts_weights_and_attention():
    p = bench.PRESETS["tiny"]
    model = bench.NativeGPT(p, 16)
    n = sum(q.numel() for q in model.parameters()) - 16 * p.n_embd  # without wpe
    assert bench.flops_per_token(model, p, 16) == 6 * n + 12 * p.n_layer * p.n_embd * 16


def test_bad_variant_names_the_choices(tmp_path):
    done = _run(["--quick", "--variants", "portkit,fast"], tmp_path)
    assert done.returncode == 2
    assert "fast" in done.stderr and "native-compiled" in done.stderr
