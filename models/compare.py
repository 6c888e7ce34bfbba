"""`portkit compare RUN_A RUN_B [--tolerance 0.02] [--acc-tolerance 0.05] [--reward-tolerance 0.25] [--key KEY] [--json]`

The same recipe run twice (e.g. on two backends). A stage trained on fixed data (SFT, and a
reward model on the file's pairs only) is compared step by step: metrics aligned by
(stage, step), the relative difference |a - b| / max(|a|, |b|, 1e-8) of its loss, mean
and max, PASS when the mean is within --tolerance (2%: what OpenRLHF accepts for a
third-party backend against the GPU run). A stage that samples from the policy (PPO,
rejection sampling, a reward model trained on the policy's own samples) draws other
samples on other hardware, so its steps diverge however right both runs are; it is
compared by where it ends up, on the held-out evaluation: accuracies within
--acc-tolerance (absolute) and the reward model's score within --reward-tolerance (in
held-out standard deviations). Exit status 0 on PASS, 1 on FAIL, 2 when the runs cannot
be compared.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TIMING = ("elapsed", "tokens_per_s", "pairs_per_s", "samples_per_s", "seconds")  # never compared
DEFAULT_KEYS = {"sft": "loss", "reward": "loss", "ppo": "value_loss", "rejection": "loss"}
SAMPLED = ("ppo", "rejection")  # compared by outcome; reward too when it sampled the policy
OUTCOMES = {"greedy_acc": "acc", "sampled_acc": "acc", "rm_score": "reward"}  # held-out figure -> tolerance


def configure(parser) -> None:
    parser.add_argument("run_a", help="run directory (holding metrics.jsonl) or a metrics.jsonl file")
    parser.add_argument("run_b")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest mean relative difference per stage that passes (default 0.02: the 2%% "
                             "OpenRLHF accepts between a third-party backend and the GPU run)")
    parser.add_argument("--acc-tolerance", type=float, default=0.05,
                        help="largest absolute difference of a held-out accuracy for sampled stages (default 0.05)")
    parser.add_argument("--reward-tolerance", type=float, default=0.25,
                        help="largest difference of the held-out reward-model score, in its held-out standard "
                             "deviations, for sampled stages (default 0.25)")
    parser.add_argument("--key", help="metric compared step by step in every stage (default: loss; for ppo "
                                      "value_loss); also compares sampled stages step by step")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")


def load(path: str | Path) -> dict[tuple[str, int], dict]:
    p = Path(path)
    p = p / "metrics.jsonl" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no metrics.jsonl (give a run directory written by `portkit run`)")
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return {(r["stage"], r["step"]): r for r in rows}


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-8)


def compare(a: dict, b: dict, key: str | None = None, tolerance: float = 0.02, acc_tolerance: float = 0.05,
            reward_tolerance: float = 0.25) -> dict:
    sampled = set() if key else {st for st in (*SAMPLED, "reward") if _sampled(a, st) or _sampled(b, st)}
    stages = _stepwise(a, b, key, tolerance, sampled)
    for st in sorted(sampled, key=lambda s: ("reward", *SAMPLED).index(s)):
        stages[st] = _outcome(a, b, st, {"acc": acc_tolerance, "reward": reward_tolerance})
    only = {"only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a))}
    ok = bool(stages) and all(s["verdict"] == "PASS" for s in stages.values())
    return {"key": key or "default", "tolerance": tolerance, "acc_tolerance": acc_tolerance,
            "reward_tolerance": reward_tolerance, "stages": stages, **only, "verdict": "PASS" if ok else "FAIL"}


def _sampled(run: dict, stage: str) -> bool:
    """PPO and rejection sampling always; the reward stage when it trained on the policy's samples."""
    if stage != "reward":
        return any(k[0] == stage for k in run)
    return any(k[0] == "reward" and "eval_policy_acc" in r for k, r in run.items())


def _stepwise(a: dict, b: dict, key, tolerance: float, skip: set) -> dict:
    stages: dict[str, dict] = {}
    for sk in (k for k in a if k in b and k[0] not in skip and k[0] != "eval"):
        k = key or DEFAULT_KEYS.get(sk[0], "loss")
        va, vb = a[sk].get(k), b[sk].get(k)
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            s = stages.setdefault(sk[0], {"mode": "steps", "key": k, "steps": [], "a": [], "b": [], "rel": []})
            s["steps"].append(sk[1]), s["a"].append(va), s["b"].append(vb), s["rel"].append(rel_diff(va, vb))
    for s in stages.values():
        s["mean_rel"] = sum(s["rel"]) / len(s["rel"])
        s["max_rel"] = max(s["rel"])
        s["verdict"] = "PASS" if s["mean_rel"] <= tolerance else "FAIL"
    return stages


def _final(run: dict, stage: str) -> dict:
    """A sampled stage's outcome: its held-out evaluation (reward: the last held-out accuracies)."""
    if stage == "reward":
        last = max((k for k in run if k[0] == "reward" and "eval_acc" in run[k]), default=None)
        return {} if last is None else {k: run[last].get(k) for k in ("eval_acc", "eval_policy_acc")}
    return next((r for r in run.values() if r["stage"] == "eval" and r.get("policy") == stage), {})


def _outcome(a: dict, b: dict, stage: str, tolerances: dict) -> dict:
    fa, fb = _final(a, stage), _final(b, stage)
    kinds = {"eval_acc": "acc", "eval_policy_acc": "acc"} if stage == "reward" else OUTCOMES
    figures = {}
    for name, kind in kinds.items():
        va, vb = fa.get(name), fb.get(name)
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            figures[name] = {"a": va, "b": vb, "diff": abs(va - vb), "tolerance": tolerances[kind]}
    ok = bool(figures) and all(f["diff"] <= f["tolerance"] for f in figures.values())
    return {"mode": "outcome", "figures": figures, "verdict": "PASS" if ok else "FAIL"}


def table(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"{name_a}  vs  {name_b}",
             f"{'stage':<10} {'compared':<28} {'n':>5} {'difference':>11} {'tolerance':>10}  verdict"]
    for stage, s in result["stages"].items():
        if s["mode"] == "steps":
            lines.append(f"{stage:<10} {s['key'] + ' step by step':<28} {len(s['steps']):>5} "
                         f"{s['mean_rel']:>10.3%}r {result['tolerance']:>10.1%}  {s['verdict']}")
            continue
        for name, f in s["figures"].items():
            lines.append(f"{stage:<10} {'held-out ' + name:<28} {'':>5} {f['a']:.3f}|{f['b']:.3f} "
                         f"{f['tolerance']:>10.3f}  {'PASS' if f['diff'] <= f['tolerance'] else 'FAIL'}")
        if not s["figures"]:
            lines.append(f"{stage:<10} {'held-out evaluation':<28} {'':>5} {'missing':>11} {'':>10}  FAIL")
    if result["only_a"] or result["only_b"]:
        lines.append(f"steps only in A: {result['only_a']}, only in B: {result['only_b']} (not compared)")
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)


def main(args) -> int:
    try:
        a, b = load(args.run_a), load(args.run_b)
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as e:
        print(f"portkit compare: {e}", file=sys.stderr)
        return 2
    result = compare(a, b, args.key, args.tolerance, args.acc_tolerance, args.reward_tolerance)
    if not result["stages"]:
        print("portkit compare: no (stage, step) with the compared metric in both runs", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else table(result, args.run_a, args.run_b))
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":  # `python -m portkit.models.compare` is `portkit compare`
    import argparse
    _parser = argparse.ArgumentParser(prog="portkit compare", description=__doc__.splitlines()[0])
    configure(_parser)
    sys.exit(main(_parser.parse_args()))
