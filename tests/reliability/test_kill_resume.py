"""Kill the tiny recipe (os._exit(137) at a named point, as kill -9 would leave it, and one real
SIGKILL from outside) at every checkpoint commit and at seeded random steps of each stage,
resume each time, and require the metrics of the uninterrupted run, row for row."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from reliability_common import TINY, read_metrics, same_metrics  # noqa: E402

from portkit.config import load_yaml  # noqa: E402

EVERY = load_yaml(TINY)["checkpoint_every"]
STAGES = {"sft": load_yaml(TINY)["sft"]["steps"], "reward": load_yaml(TINY)["reward"]["steps"],
          "ppo": load_yaml(TINY)["ppo"]["iterations"]}
COMMIT_POINTS = ("rename:{shard}", "commit", "rename:manifest.json", "committed")  # in the order a commit runs


def commits() -> list[tuple[str, int, bool]]:
    """(stage, step, final) of every checkpoint the tiny recipe commits, in order."""
    out = []
    for stage, total in STAGES.items():
        out += [(stage, s, False) for s in range(EVERY, total, EVERY)] + [(stage, total, True)]
    return out


def position(stage: str, step: int) -> int:
    """Steps of the whole run done after `step` of `stage`."""
    names = list(STAGES)
    return sum(STAGES[s] for s in names[:names.index(stage)]) + step


def last_commit(out: Path) -> tuple[str, int, bool] | None:
    manifest = out / "checkpoints" / "manifest.json"
    entries = json.loads(manifest.read_text())["entries"] if manifest.exists() else []
    return (entries[-1]["stage"], entries[-1]["step"], entries[-1]["final"]) if entries else None


def committed_lines(out: Path) -> int:
    entries = json.loads((out / "checkpoints" / "manifest.json").read_text())["entries"]
    return entries[-1]["metrics_lines"] if entries else 0


def kill_point(target, out: Path) -> str | None:
    """PORTKIT_KILL_AT for `target` in a process resuming from what `out` holds now; None for a
    step the run has passed (killed once its checkpoint at that step was committed)."""
    done = last_commit(out)
    if target[0] == "step":
        _, stage, step = target
        start = done[1] if done and done[0] == stage and not done[2] else 0
        return f"step:{stage}#{step - start}" if step > start else None
    kind, (stage, step, final) = target
    if kind == "rename:{shard}":
        return f"rename:{stage}-{'final' if final else f'{step:06d}'}.pt"
    order = commits()
    n = order.index((stage, step, final)) - (order.index(done) if done else -1)
    fresh_manifest = kind == "rename:manifest.json" and done is None  # a run started over writes one first
    return f"{kind}#{n + fresh_manifest}"


def targets(rng: random.Random) -> list:
    """Every commit (at one of its points, drawn at random) and a random step of each stage, in run order."""
    found = [(COMMIT_POINTS[rng.randrange(len(COMMIT_POINTS))], c) for c in commits()]
    found += [("step", stage, rng.randint(1, total)) for stage, total in STAGES.items()]

    def when(t):
        if t[0] == "step":
            return position(t[1], t[2]) + (0.75 if t[2] % EVERY == 0 and t[2] < STAGES[t[1]] else 0.25)
        return position(t[1][0], t[1][1]) + 0.5
    return sorted(found, key=when)


def test_killed_at_every_commit_and_at_random_steps_resumes_to_the_same_metrics(
        portkit_cli, reference_metrics, fault_seed, tmp_path):
    rng = random.Random(fault_seed)
    out = tmp_path / "run"
    plan, cut_killed = targets(rng), False
    for i, target in enumerate(plan):
        point = kill_point(target, out)
        if point is None:
            continue
        killed = portkit_cli.run(out, *(["--resume"] if i else []), env={"PORTKIT_KILL_AT": point})
        assert killed.returncode == 137, f"seed {fault_seed}: {point} was not reached: {killed.stderr}"
        lines = (out / "metrics.jsonl").read_bytes()
        if not cut_killed and lines.count(b"\n") > committed_lines(out):
            # the next resume cuts metrics.jsonl back to the checkpoint: a kill there loses nothing
            cut = portkit_cli.run(out, "--resume", env={"PORTKIT_KILL_AT": "rename:metrics.jsonl"})
            assert cut.returncode == 137 and (out / "metrics.jsonl").read_bytes() == lines, cut.stderr
            cut_killed = True
    done = portkit_cli.run(out, "--resume")
    assert done.returncode == 0, f"seed {fault_seed}, kills {plan}: {done.stderr}"
    same_metrics(read_metrics(out), reference_metrics, f"seed {fault_seed}, kills {plan}")


def test_sigkill_from_outside_at_a_random_moment(portkit_cli, reference_metrics, fault_seed, tmp_path):
    """A real kill -9 of the process, at a random moment after its first checkpoint."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "portkit.cli", "run", str(TINY), "--out", str(out), "--quiet"],
                            env=portkit_cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while last_commit(out) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(fault_seed + 1).uniform(0.0, 1.5))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done = portkit_cli.run(out, "--resume")
    assert done.returncode == 0, f"seed {fault_seed}: {done.stderr}"
    same_metrics(read_metrics(out), reference_metrics, f"seed {fault_seed}")
