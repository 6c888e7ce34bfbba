"""The run report: report.json (figures, checks, timings, versions), report.md and PNG plots."""
from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from portkit import atomic

KL_BOUND = 0.5          # nats per response: held-out KL to the SFT policy after an RL stage
RM_ACC_MIN = 0.7        # on the held-out hand-made pairs: a third of their mistakes (an item replaced
                        # or dropped) are seen only by recomputing the answer, beyond this reward model
RM_POLICY_ACC_MIN = 0.85  # on the SFT policy's own right-vs-wrong answers to held-out prompts
RL_STAGES = ("ppo", "rejection")


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
    for stage, key in (("sft", "loss"), ("reward", "loss"), ("reward", "eval_acc"), ("reward", "eval_policy_acc"),
                       ("ppo", "reward_mean"), ("ppo", "score_mean"), ("ppo", "kl"), ("ppo", "rule_acc"),
                       ("rejection", "reward_mean"), ("rejection", "rule_acc_best")):
        s = [v for _, v in series(rows, stage, key)]
        if not s:
            continue
        k = max(1, len(s) // 10)
        out[f"{stage}.{key}"] = {"first": s[0], "last": s[-1], "first_mean": _mean(s[:k]),
                                 "last_mean": _mean(s[-k:]), "max": max(s), "min": min(s), "n": len(s)}
    return out


def heldout(rows: list[dict]) -> dict:
    """Per policy: the held-out evaluation; for an RL stage, SFT's figures as `*_before` beside
    its own as `*_after`, with the gains and their noise margins."""
    evals = {r["policy"]: r for r in rows if r["stage"] == "eval"}
    out = {}
    for policy, r in evals.items():
        figs = {k: v for k, v in r.items() if k not in ("stage", "step", "policy", "elapsed")}
        if policy in RL_STAGES and "sft" in evals:
            for key in ("greedy_acc", "sampled_acc", "rm_score", "kl"):
                figs[f"{key}_before"], figs[f"{key}_after"] = evals["sft"][key], figs.pop(key)
        out[policy] = figs
    return out


def checks(fig: dict, summary: dict, held: dict) -> dict:
    c = {}
    if "sft.loss" in fig:
        c["sft_loss_falls"] = fig["sft.loss"]["last_mean"] < fig["sft.loss"]["first_mean"]
    if summary.get("rm_eval_acc") is not None:
        c[f"rm_heldout_acc_ge_{RM_ACC_MIN}"] = summary["rm_eval_acc"] >= RM_ACC_MIN
    if summary.get("rm_policy_acc") is not None:
        c[f"rm_policy_acc_ge_{RM_POLICY_ACC_MIN}"] = summary["rm_policy_acc"] >= RM_POLICY_ACC_MIN
    for stage in RL_STAGES:
        h = held.get(stage)
        if h is None:
            continue
        for key in ("greedy", "sampled"):
            if h.get(f"{key}_gain") is not None:  # prompts a rule can check
                c[f"{stage}_heldout_{key}_acc_rises_beyond_noise"] = h[f"{key}_gain"] > h[f"{key}_margin"]
        c[f"{stage}_heldout_kl_le_{KL_BOUND}"] = h["kl_after"] <= KL_BOUND
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
    return made + plot_heldout(rows, out, plt)


def plot_heldout(rows: list[dict], out: Path, plt) -> list[str]:
    """One panel per held-out figure, a bar per policy (SFT, then each RL stage)."""
    evals = [r for r in rows if r["stage"] == "eval"]
    keys = [k for k in ("greedy_acc", "sampled_acc", "rm_score", "kl") if any(isinstance(r.get(k), float) for r in evals)]
    if not keys:
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        names, values = zip(*((r["policy"], r.get(key) or 0.0) for r in evals))
        ax.bar(names, values, color=["0.6"] + ["C0"] * (len(names) - 1))
        for x, v in enumerate(values):
            ax.annotate(f"{v:.3f}", (x, v), ha="center", va="bottom")
        ax.set_title(f"held-out {key} (n={evals[0]['n']})")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "heldout.png", dpi=100)
    plt.close(fig)
    return ["heldout.png"]


def write(out: Path, recipe, run, backend, strategy, seconds: float) -> dict:
    """Write report.json and report.md into `out`; return the report."""
    rows = read_metrics(out / "metrics.jsonl")
    fig, held = figures(rows), heldout(rows)
    rm_acc = run.summary.get("rm_eval_acc")
    data = {"recipe": recipe.name, "recipe_path": recipe.path, "backend": backend.name, "device": str(run.device),
            "device_name": backend.device_name(), "strategy": strategy.name, "world_size": strategy.world,
            "ops": recipe.ops, "seconds_total_this_process": seconds,
            "seconds_per_stage": {s: run.elapsed.get(s) for s in recipe.stages},
            "rm_heldout_acc": rm_acc, "rm_policy_acc": run.summary.get("rm_policy_acc"),
            "rm_policy_pairs": run.summary.get("rm_policy_pairs"), "heldout": held, "figures": fig,
            "checks": checks(fig, run.summary, held), "checks_enforced": recipe.enforce_checks, "versions": versions(),
            "plots": plot(rows, out)}
    atomic.write(out / "report.json", json.dumps(data, indent=1))
    atomic.write(out / "report.md", markdown(data))
    return data


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
        lines += ["", f"Reward model held-out accuracy (final): **{d['rm_heldout_acc']:.3f}** on hand-made pairs"]
    if d["rm_policy_acc"] is not None:
        lines += [f"on the SFT policy's own right-vs-wrong answers: **{d['rm_policy_acc']:.3f}** "
                  f"({d['rm_policy_pairs']} held-out pairs)"]
    lines += heldout_table(d["heldout"])
    lines += ["", "## Time per stage", ""]
    lines += [f"- {s}: {t:.1f} s" for s, t in d["seconds_per_stage"].items() if t is not None]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in d["plots"]]
    lines += ["", "## Versions", ""] + [f"- {k} {v}" for k, v in d["versions"].items()]
    return "\n".join(lines) + "\n"


def heldout_table(held: dict) -> list[str]:
    """Held-out figures of each policy; an RL stage's gain with its noise margin."""
    if not held:
        return []
    lines = ["", "## Held-out evaluation", "", "| policy | greedy acc | sampled acc | RM score | KL to SFT |",
             "| --- | --- | --- | --- | --- |"]
    for policy, h in held.items():
        after = "" if policy == "sft" else "_after"
        cells = [_cell(h, f"{k}{after}", f"{k.split('_')[0]}_gain") for k in ("greedy_acc", "sampled_acc")]
        cells += [_cell(h, f"rm_score{after}"), _cell(h, f"kl{after}")]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    n = next(iter(held.values()))["n"]
    return lines + ["", f"{n} held-out prompts; gains are after - before (SFT), +- the noise margin "
                        f"(3 standard errors of the per-prompt differences)."]


def _cell(h: dict, key: str, gain: str | None = None) -> str:
    if h.get(key) is None:
        return "-"
    if gain is None or h.get(gain) is None:
        return f"{h[key]:.3f}"
    return f"{h[key]:.3f} ({h[gain]:+.3f} +- {h[gain.replace('gain', 'margin')]:.3f})"


def failed_checks(d: dict) -> list[str]:
    return [name for name, ok in d["checks"].items() if not ok]


def summary_text(d: dict) -> str:
    lines = [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in d["checks"].items()]
    for policy, h in d["heldout"].items():
        after = "" if policy == "sft" else "_after"
        lines.append(f"held-out {policy}: greedy {_cell(h, 'greedy_acc' + after)}  sampled "
                     f"{_cell(h, 'sampled_acc' + after)}  RM {_cell(h, 'rm_score' + after)}  KL {_cell(h, 'kl' + after)}")
    if not d["checks_enforced"]:
        lines.append("(checks reported only: this recipe sets enforce_checks: false)")
    return "\n".join(lines)
