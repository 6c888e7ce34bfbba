"""`portkit bench ops` on the CPU: the smoke run, its JSON schema and markdown table."""
import argparse
import json

import pytest

import portkit
from portkit import cli
from portkit.bench import cli as bench
from portkit.bench import ops as benchmark


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="portkit bench")
    bench.configure(parser)
    return bench.main(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "ops.json"
    assert _run("ops", "--quick", "--backend", "cpu", "--json-out", str(out)) == 0
    return json.loads(out.read_text())


def test_bench_is_the_portkit_bench_command():
    assert cli.COMMANDS["bench"][0] == "portkit.bench.cli"


def test_quick_run_writes_the_json_schema(report):
    for key in ("schema", "date", "command", "backend", "device", "torch", "copy_gbps", "config", "results"):
        assert key in report, key
    assert report["schema"] == "portkit.bench.ops/1" and report["backend"] == "cpu"
    assert report["command"].startswith("portkit bench ops --quick") and report["copy_gbps"] > 0
    measured = {(r["op"], r["mode"]) for r in report["results"]}
    for op in ("rms_norm", "layer_norm", "bias_gelu", "swiglu", "rotary", "softmax"):
        assert {(op, "fwd"), (op, "fwd+bwd")} <= measured, op
    assert {("linear_cross_entropy", "fwd+bwd"), ("adamw", "step"), ("adamw_bf16_master", "step")} <= measured
    assert {("gelu_mlp", "fwd"), ("gelu_mlp", "fwd+bwd")} <= measured


def test_the_gelu_mlp_reports_tflops_and_that_both_sides_agree(report):
    for r in (r for r in report["results"] if r["op"] == "gelu_mlp"):
        assert "tflops" in r["portkit"] and "tflops" in r["native"] and r["bytes"] is None, r
        assert r["max_rel_error"] < 2e-2, r  # bf16 rounding; a wrong gradient would show as O(1)


def test_each_result_has_both_sides_timed(report):
    for r in report["results"]:
        assert r["portkit"]["ms"] > 0 and r["portkit"]["name"].startswith("portkit"), r
        if r["op"] != "adamw_bf16_master":
            assert r["native"]["ms"] > 0 and r["speedup"] > 0, r
        if r["bytes"] is not None:
            assert r["portkit"]["gbps"] >= 0 and "copy_ratio" in r["portkit"], r
    lce = next(r for r in report["results"] if r["op"] == "linear_cross_entropy")
    assert lce["portkit"]["peak_bytes"] is None  # no allocator counters on the CPU


def test_render_prints_the_markdown_table(report, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert _run("ops", "--render", str(path)) == 0
    out = capsys.readouterr().out
    assert "| op | mode | shape | portkit ms" in out and "| rms_norm/reference | fwd+bwd |" in out
    assert f"`{report['command']}`" in out


def test_an_unknown_op_is_refused(capsys):
    assert cli.main(["bench", "ops", "--quick", "--ops", "rms_norm,flash"]) == 2
    assert "portkit bench: unknown op(s) flash" in capsys.readouterr().err


def test_quick_sizes_keep_explicit_overrides():
    cfg = benchmark.BenchConfig.quick_sizes(rows=8)
    assert cfg.rows == 8 and cfg.hidden == 64 and cfg.quick


def test_impls_time_each_distinct_implementation_once():
    """On the CPU "auto" and "reference" both select the reference and Triton does not run:
    one portkit side per mode, named after the reference."""
    if portkit.backend().name != "cpu":
        pytest.skip("asserts the CPU's choices")
    cfg = benchmark.BenchConfig.quick_sizes(ops=("rms_norm",), impls=("auto", "reference", "triton"))
    rows = benchmark.run(cfg)["results"]
    assert [(r["mode"], r["portkit"]["name"]) for r in rows] == [("fwd", "portkit (reference)"),
                                                                   ("fwd+bwd", "portkit (reference)")]
    assert "--impls auto,reference,triton" in benchmark.command_line(cfg)


def test_the_liger_peer_is_skipped_off_cuda_when_liger_is_installed(monkeypatch):
    """With Liger importable, a run on a device Liger cannot serve gets no Liger side (and no crash)."""
    import sys
    import types
    fake = types.ModuleType("liger_kernel.transformers.functional")
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", fake)
    portkit.select_backend("cpu")
    assert benchmark.liger_peer("rms_norm", benchmark.BenchConfig()) is None
