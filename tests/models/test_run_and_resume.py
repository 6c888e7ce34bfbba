"""End to end on the tiny recipe: the runner, its report, kill-and-resume, compare, errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portkit.models import compare as C
from portkit.models import recipe as R

TINY = Path(R.__file__).parent / "recipes" / "tiny.yaml"
TIMING = set(C.TIMING)


def portkit_run(*args, env=None, module="portkit.models.runner"):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PORTKIT_BACKEND": "cpu", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=300)


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    done = portkit_run(TINY, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    return out


def test_tiny_run_writes_metrics_report_and_plots(tiny_run):
    rows = metrics(tiny_run)
    counts = {s: sum(r["stage"] == s for r in rows) for s in ("sft", "reward", "ppo")}
    assert counts == {"sft": 6, "reward": 4, "ppo": 3}
    assert {"loss", "lr", "tokens_per_s"} <= set(rows[0])
    assert {"reward_mean", "kl", "kl_coef", "value_loss", "clipfrac"} <= set([r for r in rows if r["stage"] == "ppo"][-1])
    assert [r["policy"] for r in rows if r["stage"] == "eval"] == ["sft", "ppo"]
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["checks"]["sft_loss_falls"] is True  # SFT loss falls even on the tiny recipe
    assert report["backend"] == "cpu" and 0 <= report["rm_heldout_acc"] <= 1
    assert set(report["plots"]) == {"sft.png", "reward.png", "ppo.png", "heldout.png"}
    assert all((tiny_run / p).stat().st_size > 1000 for p in report["plots"])
    assert "## Checks" in (tiny_run / "report.md").read_text()


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y) and (x["stage"], x["step"]) == (y["stage"], y["step"])
        for k in set(x) - TIMING:
            if isinstance(x[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-7), (x["stage"], x["step"], k)
            else:
                assert x[k] == y[k], (x["stage"], x["step"], k)


def test_kill_and_resume_gives_the_same_metrics(tiny_run, tmp_path):
    out = tmp_path / "run"
    # killed in the reward stage (after 6 sft + 3 reward steps; last checkpoint: reward step 2)
    killed = portkit_run(TINY, "--out", out, "--quiet", env={"PORTKIT_KILL_AFTER_STEPS": "9"})
    assert killed.returncode == 137
    assert len(metrics(out)) == 9
    # resumed, then killed again in PPO (reward 3..4, ppo 1), before any PPO checkpoint
    again = portkit_run(TINY, "--out", out, "--quiet", "--resume", env={"PORTKIT_KILL_AFTER_STEPS": "3"})
    assert again.returncode == 137
    done = portkit_run(TINY, "--out", out, "--quiet", "--resume")
    assert done.returncode == 0, done.stderr
    _same(metrics(out), metrics(tiny_run))


def test_compare_verdicts(tiny_run, tmp_path):
    same = portkit_run(tiny_run, tiny_run, "--json", module="portkit.models.compare")
    assert same.returncode == 0 and json.loads(same.stdout)["verdict"] == "PASS"
    rows = metrics(tiny_run)
    for r in rows:
        if r["stage"] == "sft":
            r["loss"] *= 1.05  # 5% off: beyond the 2% tolerance
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = C.compare(C.load(tiny_run), C.load(tmp_path))
    assert result["verdict"] == "FAIL" and result["stages"]["sft"]["verdict"] == "FAIL"
    assert result["stages"]["sft"]["mean_rel"] == pytest.approx(0.05 / 1.05, rel=1e-6)
    assert result["stages"]["reward"]["verdict"] == "PASS"
    assert C.compare(C.load(tiny_run), C.load(tmp_path), tolerance=0.1)["verdict"] == "PASS"


def test_compare_judges_ppo_by_its_heldout_outcome(tiny_run, tmp_path):
    """PPO samples: other hardware draws other samples, so its steps are not compared, where it ends is."""
    rows = metrics(tiny_run)
    for r in rows:
        if r["stage"] == "ppo":
            r["value_loss"] *= 3  # a different trajectory
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ppo = C.compare(C.load(tiny_run), C.load(tmp_path))["stages"]["ppo"]
    assert ppo["mode"] == "outcome" and ppo["verdict"] == "PASS"
    assert set(ppo["figures"]) == {"greedy_acc", "sampled_acc", "rm_score"}
    for r in rows:
        if r["stage"] == "eval" and r["policy"] == "ppo":
            r["sampled_acc"] += 0.06  # beyond the 0.05 accuracy tolerance
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = C.compare(C.load(tiny_run), C.load(tmp_path))
    assert result["stages"]["ppo"]["verdict"] == "FAIL" and result["verdict"] == "FAIL"
    assert C.compare(C.load(tiny_run), C.load(tmp_path), acc_tolerance=0.1)["verdict"] == "PASS"


def test_bad_recipe_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("n_embd: 32", "n_embed: 32"))
    done = portkit_run(bad, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert f"{bad}: recipe.model: unknown key 'n_embed'" in done.stderr
    assert "Traceback" not in done.stderr


def test_rl_stages_side_by_side_and_failed_checks_exit_nonzero(tmp_path):
    """PPO and rejection sampling both from the SFT policy, each judged on the held-out prompts
    against it; a few tiny iterations change no answer, so the enforced checks FAIL: exit 1."""
    recipe = tmp_path / "rs.yaml"
    recipe.write_text(TINY.read_text().replace("name: tiny", "name: rs").replace("enforce_checks: false", "enforce_checks: true")
                      + "stages: [sft, reward, ppo, rejection]\n"
                      "rejection: {rounds: 2, prompts_per_round: 4, n_samples: 3, max_new_tokens: 6, "
                      "steps_per_round: 2, batch_size: 4}\n")
    done = portkit_run(recipe, "--out", tmp_path / "out", "--quiet")
    assert done.returncode == 1, done.stderr
    rows = [r for r in metrics(tmp_path / "out") if r["stage"] == "rejection"]
    assert len(rows) == 2 and all(r["reward_best"] >= r["reward_mean"] for r in rows)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["policy"] for r in metrics(tmp_path / "out") if r["stage"] == "eval"] == ["sft", "ppo", "rejection"]
    for stage in ("ppo", "rejection"):
        held = report["heldout"][stage]
        assert held["n"] == 1200 and held["greedy_acc_before"] == held["greedy_acc_after"]
        assert report["checks"][f"{stage}_heldout_greedy_acc_rises_beyond_noise"] is False
    assert "heldout.png" in report["plots"] and "## Held-out evaluation" in (tmp_path / "out" / "report.md").read_text()
