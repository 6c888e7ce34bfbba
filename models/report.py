"""The run report: report.json (figures, checks, timings, versions), report.md and PNG plots."""
from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from portkit import atomic

KL_BOUND = 1.0   # nats per response: the mean KL to the reference over any 10 consecutive PPO
KL_WINDOW = 10   # iterations must stay below KL_BOUND (one rollout batch alone is noisy)
RM_ACC_MIN = 0.9


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(rows: list[dict], stage: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if r["stage"] == stage and isinstance(r.get(key), (int, float))]


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def figures(rows: list[dict]) -> dict:
    """First/last values (and means of the first/last tenth, which noise moves less)."""
    out = {}
    for stage, key in (("sft", "loss"), ("reward", "loss"), ("reward", "eval_acc"), ("ppo", "reward_mean"),
                       ("ppo", "score_mean"), ("ppo", "kl"), ("ppo", "rule_acc"), ("rejection", "reward_mean"),
                       ("rejection", "rule_acc_best")):
        s = [v for _, v in series(rows, stage, key)]
        if not s:
            continue
        k, w = max(1, len(s) // 10), min(KL_WINDOW, len(s))
        out[f"{stage}.{key}"] = {"first": s[0], "last": s[-1], "first_mean": _mean(s[:k]),
                                 "last_mean": _mean(s[-k:]), "max": max(s), "min": min(s), "n": len(s),
                                 "max_window_mean": max(_mean(s[i:i + w]) for i in range(len(s) - w + 1))}
    return out


def checks(fig: dict, rm_acc: float | None) -> dict:
    c = {}
    if "sft.loss" in fig:
        c["sft_loss_falls"] = fig["sft.loss"]["last_mean"] < fig["sft.loss"]["first_mean"]
    if rm_acc is not None:
        c[f"rm_heldout_acc_ge_{RM_ACC_MIN}"] = rm_acc >= RM_ACC_MIN
    if "ppo.reward_mean" in fig:
        c["ppo_reward_rises"] = fig["ppo.reward_mean"]["last_mean"] > fig["ppo.reward_mean"]["first_mean"]
        c[f"ppo_kl_{KL_WINDOW}iter_mean_below_{KL_BOUND}"] = fig["ppo.kl"]["max_window_mean"] < KL_BOUND
    if "rejection.reward_mean" in fig:
        c["rejection_reward_rises"] = fig["rejection.reward_mean"]["last"] > fig["rejection.reward_mean"]["first"]
    return c


def versions() -> dict:
    v = {"python": platform.python_version()}
    for dist in ("portkit", "torch", "deepspeed", "megatron-core", "colossalai", "transformers"):
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return v


def plot(rows: list[dict], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("sft", "loss"), ("reward", "loss"), ("reward", "eval_acc"), ("ppo", "reward_mean"), ("ppo", "score_mean"),
              ("ppo", "kl"), ("ppo", "rule_acc"), ("rejection", "reward_mean"), ("rejection", "loss")]
    made = []
    for stage in dict.fromkeys(s for s, _ in panels):
        keys = [k for s, k in panels if s == stage and series(rows, stage, k)]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            xs, ys = zip(*series(rows, stage, key))
            ax.plot(xs, ys, marker="." if len(xs) < 60 else None)
            ax.set_title(f"{stage}: {key}")
            ax.set_xlabel("iteration" if stage in ("ppo", "rejection") else "step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        atomic.write(out / f"{stage}.png", lambda f: fig.savefig(f, format="png", dpi=100))
        plt.close(fig)
        made.append(f"{stage}.png")
    return made


def write(out: Path, recipe, run, backend, strategy, seconds: float) -> tuple[Path, Path]:
    rows = read_metrics(out / "metrics.jsonl")
    fig = figures(rows)
    rm_acc = run.summary.get("rm_eval_acc")
    data = {"recipe": recipe.name, "recipe_path": recipe.path, "backend": backend.name, "device": str(run.device),
            "device_name": backend.device_name(), "strategy": strategy.name, "world_size": strategy.world,
            "ops": recipe.ops, "seconds_total_this_process": seconds,
            "seconds_per_stage": {s: run.elapsed.get(s) for s in recipe.stages},
            "rm_heldout_acc": rm_acc, "figures": fig, "checks": checks(fig, rm_acc), "versions": versions(),
            "plots": plot(rows, out)}
    atomic.write(out / "report.json", json.dumps(data, indent=1))
    atomic.write(out / "report.md", markdown(data))
    return out / "report.md", out / "report.json"


def markdown(d: dict) -> str:
    lines = [f"# Run report: {d['recipe']}", "",
             f"backend **{d['backend']}** ({d['device_name']}, {d['device']}), strategy {d['strategy']} "
             f"x{d['world_size']}, ops {d['ops']}", "", "## Checks", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in d["checks"].items()]
    lines += ["", "## Figures", "", "| metric | first | last | mean first 10% | mean last 10% | max |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, f in d["figures"].items():
        lines.append(f"| {name} | {f['first']:.4f} | {f['last']:.4f} | {f['first_mean']:.4f} | "
                     f"{f['last_mean']:.4f} | {f['max']:.4f} |")
    if d["rm_heldout_acc"] is not None:
        lines += ["", f"Reward model held-out accuracy (final): **{d['rm_heldout_acc']:.3f}**"]
    lines += ["", "## Time per stage", ""]
    lines += [f"- {s}: {t:.1f} s" for s, t in d["seconds_per_stage"].items() if t is not None]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in d["plots"]]
    lines += ["", "## Versions", ""] + [f"- {k} {v}" for k, v in d["versions"].items()]
    return "\n".join(lines) + "\n"


def failed_checks(out: Path) -> list[str]:
    return [name for name, ok in json.loads((out / "report.json").read_text())["checks"].items() if not ok]


def summary_text(out: Path) -> str:
    d = json.loads((out / "report.json").read_text())
    return "\n".join(f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in d["checks"].items())
