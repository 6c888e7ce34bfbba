"""`portkit compare RUN_A RUN_B [--tolerance 0.02] [--key KEY] [--json]`

The same recipe run twice (e.g. on two backends): metrics aligned by (stage, step), the
step-by-step relative difference |a - b| / max(|a|, |b|, 1e-8) of each stage's loss (PPO:
the critic's value loss, since the clipped policy loss hovers around zero), its mean and
max per stage, and a verdict: PASS when every stage's mean relative difference is within
the tolerance. The default 2% is the figure OpenRLHF accepts for a third-party backend
against the GPU run. Exit status 0 on PASS, 1 on FAIL, 2 when the runs cannot be compared.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TIMING = ("elapsed", "tokens_per_s", "pairs_per_s", "samples_per_s", "seconds")  # never compared
DEFAULT_KEYS = {"sft": "loss", "reward": "loss", "ppo": "value_loss", "rejection": "loss"}


def configure(parser) -> None:
    parser.add_argument("run_a", help="run directory (holding metrics.jsonl) or a metrics.jsonl file")
    parser.add_argument("run_b")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest mean relative difference per stage that passes (default 0.02: the 2%% "
                             "OpenRLHF accepts between a third-party backend and the GPU run)")
    parser.add_argument("--key", help="metric compared step by step in every stage (default: loss; for ppo "
                                      "value_loss)")
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


def compare(a: dict, b: dict, key: str | None = None, tolerance: float = 0.02) -> dict:
    stages: dict[str, dict] = {}
    for sk in (k for k in a if k in b):
        k = key or DEFAULT_KEYS.get(sk[0], "loss")
        va, vb = a[sk].get(k), b[sk].get(k)
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            s = stages.setdefault(sk[0], {"key": k, "steps": [], "a": [], "b": [], "rel": []})
            s["steps"].append(sk[1]), s["a"].append(va), s["b"].append(vb), s["rel"].append(rel_diff(va, vb))
    for s in stages.values():
        s["mean_rel"] = sum(s["rel"]) / len(s["rel"])
        s["max_rel"] = max(s["rel"])
        s["verdict"] = "PASS" if s["mean_rel"] <= tolerance else "FAIL"
    only = {"only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a))}
    ok = bool(stages) and all(s["verdict"] == "PASS" for s in stages.values())
    return {"key": key or "default", "tolerance": tolerance, "stages": stages, **only, "verdict": "PASS" if ok else "FAIL"}


def table(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"{name_a}  vs  {name_b}  (tolerance {result['tolerance']:.1%} mean relative difference)",
             f"{'stage':<10} {'metric':<11} {'steps':>5} {'mean rel':>9} {'max rel':>9}  verdict"]
    for stage, s in result["stages"].items():
        lines.append(f"{stage:<10} {s['key']:<11} {len(s['steps']):>5} {s['mean_rel']:>9.3%} {s['max_rel']:>9.3%}"
                     f"  {s['verdict']}")
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
    result = compare(a, b, args.key, args.tolerance)
    if not result["stages"]:
        print(f"portkit compare: no (stage, step) with the compared metric in both runs", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else table(result, args.run_a, args.run_b))
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":  # `python -m portkit.models.compare` is `portkit compare`
    import argparse
    _parser = argparse.ArgumentParser(prog="portkit compare", description=__doc__.splitlines()[0])
    configure(_parser)
    sys.exit(main(_parser.parse_args()))
