"""A run never outlives its launcher: kill -9 of the torchrun agent under `portkit launch`
ends the workers too (before, they went on and wrote the whole run ~15 s later), and a
recipe whose checks FAIL exits non-zero."""
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from reliability_common import TINY  # noqa: E402

from portkit import cli  # noqa: E402


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_killing_the_torchrun_agent_ends_the_workers(portkit_cli, tmp_path):
    recipe = tmp_path / "long.yaml"  # long enough to be killed mid-way
    recipe.write_text(TINY.read_text().replace("sft: {steps: 6,", "sft: {steps: 2000,"))
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "portkit.cli", "launch", "--backend", "cpu",
                                 "--nproc-per-node", "1", str(recipe), "--out", str(out), "--quiet"],
                                env=portkit_cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, 240, "the first metrics line")
        agent = psutil.Process(launcher.pid).children()[0]
        workers = agent.children()
        assert workers and "torch.distributed.run" in " ".join(agent.cmdline())
        agent.kill()
        launcher.wait(timeout=60)
        _wait_for(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 10,
                  "the workers to end with their agent")
        size = metrics.stat().st_size
        time.sleep(1.0)
        assert metrics.stat().st_size == size and not (out / "report.json").exists()
        assert launcher.returncode != 0
    finally:
        for p in psutil.Process(launcher.pid).children(recursive=True) if launcher.poll() is None else []:
            p.kill()
        launcher.kill()


def test_a_failed_check_makes_run_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PORTKIT_BACKEND", "cpu")
    recipe = tmp_path / "enforced.yaml"  # the tiny recipe's reward model misses the 0.9 accuracy check
    recipe.write_text(TINY.read_text().replace("enforce_checks: false", "enforce_checks: true"))
    rc = cli.main(["run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    failed = [k for k, ok in report["checks"].items() if not ok]
    assert rc == (1 if failed else 0), err
    assert not failed or f"{len(failed)} check(s) FAIL: {', '.join(failed)}" in err
