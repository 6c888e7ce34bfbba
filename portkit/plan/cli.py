"""`portkit plan`: parallel layouts and training time of a GPT on a cluster, from a cost model.

Searches tensor-, pipeline- and data-parallel sizes, ZeRO stage, micro-batch, interleaving and
activation recomputation that fit in device memory, and estimates the step time (compute,
memory-bound kernels, TP/PP/DP communication, pipeline bubble, optimizer), MFU and days to
train. Formulas and their sources are in portkit/plan/costmodel.py; cluster specs, with the
software stack each calibration comes from, in portkit/plan/clusters/*.yaml.
"""
from __future__ import annotations

import argparse
import json
import sys

from portkit.config import ConfigError
from portkit.plan.costmodel import GPT, Constraints, Estimate, load_cluster, preset, search, shipped_clusters

VALIDATION = """\
How close the model lands on published runs (tests/plan/test_validation_plan.py checks each within 30%):
  GPT-3 175B, 300B tokens, 96 DGX-A100 nodes: about 50 days (the figure quoted for
    this run; Narayanan et al. 2021 give 34 days on 1024 A100 at 140 TFLOP/s, i.e. 45 on 768).
    plan picks t=8 p=32 no recompute: 37.5 days (-25%); pinned to full recompute: 43.8 days (-12%).
  Narayanan et al. 2021, 175B on 1024 A100, full recompute, t=8 p=8: 142.5 TFLOP/s vs 140 (+2%).
  Narayanan et al. 2021 Table 1 (1.7B-1T, 32-3072 A100, same t and p): 127-144 vs 135-163
    TFLOP/s per GPU (-12% to +5%, falling behind for the largest models).
  Korthikanti et al. 2022, 530B on 2240 A100, t=8 p=35, sequence parallel: MFU 46.2% vs 54.2%
    with selective recompute (-15%), 35.3% vs 42.1% with full recompute (-16%).
  Megatron-LM README, GPT-3 175B (vocab 131072), batch 1152 on H100: MFU 49.9% vs 47% on 96 GPUs
    (+6%), 42.5% vs 42% on 4608 GPUs (+1%).
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__.split("\n\n")[1]
    p.epilog = VALIDATION + f"\nShipped clusters: {', '.join(shipped_clusters())}."
    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="SIZE", help="preset: 125m 350m 760m 1.3b 2.7b 6.7b 13b 30b 66b 175b")
    for name in ("layers", "hidden", "heads", "seq", "vocab"):
        m.add_argument(f"--{name}", type=int, help=f"{name} (overrides the preset's)")
    w = p.add_argument_group("work and cluster")
    w.add_argument("--tokens", type=float, required=True, help="training tokens, e.g. 300e9")
    w.add_argument("--cluster", required=True, metavar="SPEC", help="shipped cluster name or path to a cluster YAML")
    w.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    w.add_argument("--devices", type=int, help="devices in all, for less than a node (default nodes x devices per node)")
    w.add_argument("--global-batch", type=int, help="sequences per step (default: the preset's, 1536 for 175b)")
    f = p.add_argument_group("fix part of the layout (default: search what the cluster's stack offers)")
    for name in ("tp", "pp", "zero", "micro-batch", "virtual"):
        f.add_argument(f"--{name}", type=int)
    f.add_argument("--recompute", choices=("none", "selective", "full"))
    f.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--top", type=int, default=3, help="layouts to show (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def model_from(args) -> tuple[GPT, int | None]:
    base, batch = preset(args.model) if args.model else (None, None)
    dims = {k: getattr(args, k) for k in ("layers", "hidden", "heads", "seq", "vocab") if getattr(args, k)}
    if base is None:
        missing = [k for k in ("layers", "hidden", "heads") if k not in dims]
        if missing:
            raise ConfigError(f"give --model SIZE or all of --layers --hidden --heads (missing: {', '.join(missing)})")
        return GPT(**dims), None
    fields = {k: getattr(base, k) for k in ("layers", "hidden", "heads", "seq", "vocab")}
    return GPT(**{**fields, **dims}), batch


def devices_from(args, per_node: int) -> int:
    if args.devices is None:
        return args.nodes * per_node
    if args.nodes != 1 and args.devices != args.nodes * per_node:
        raise ConfigError(f"--devices {args.devices} disagrees with --nodes {args.nodes} x {per_node} per node; give one")
    return args.devices


def constraints_from(args) -> Constraints:
    return Constraints(tp=args.tp, pp=args.pp, zero=args.zero, micro_batch=args.micro_batch,
                       recompute=args.recompute, sp=args.sequence_parallel, virtual=args.virtual)


def fixed(args) -> bool:
    return any(getattr(args, k) is not None for k in
               ("tp", "pp", "zero", "micro_batch", "recompute", "sequence_parallel", "virtual"))


def run(args) -> tuple[dict, list[Estimate]]:
    model, preset_batch = model_from(args)
    cluster = load_cluster(args.cluster)
    devices = devices_from(args, cluster.devices_per_node)
    batch = args.global_batch or preset_batch
    if batch is None:
        raise ConfigError("give --global-batch (sequences per step) for a model without a preset")
    found, tried = search(model, cluster, devices, batch, args.tokens, constraints_from(args))
    if not found:
        raise ConfigError(f"none of the {tried} layouts of {model.params / 1e9:.1f}B parameters on {devices} "
                          f"x {cluster.device} ({cluster.memory_gb:g} GB) fits in memory with global batch {batch}"
                          f"{' and the fixed choices' if fixed(args) else ''}; "
                          "add nodes, or allow more recompute/ZeRO")
    return {"model": {**{k: getattr(model, k) for k in ("layers", "hidden", "heads", "seq", "vocab")},
                      "params": model.params},
            "cluster": cluster.name, "stack": cluster.stack.name, "devices": devices, "nodes": args.nodes,
            "global_batch": batch, "tokens": args.tokens, "layouts_tried": tried, "layouts_fit": len(found),
            "best": found[0].as_dict(), "top": [e.as_dict() for e in found[:args.top]]}, found[:args.top]


def row(e: Estimate) -> str:
    lay, t = e.layout, e.time_s
    parts = " ".join(f"{t[k]:7.3g}" for k in ("compute", "elementwise", "tp_comm", "pp_comm", "bubble", "dp_comm", "optimizer"))
    return (f"{lay.tp:>3}{lay.pp:>4}{lay.dp:>5}{lay.virtual:>3}{lay.zero:>5}{lay.micro_batch:>4} "
            f"{lay.recompute:<10}{'yes' if lay.sp else 'no':<4}{e.memory_gb['total']:6.1f} {e.step_s:8.4g} "
            f"{parts} {e.mfu:6.1%} {e.days:8.1f}")


def report(out: dict, found: list[Estimate]) -> str:
    m = out["model"]
    lines = [f"GPT {m['params'] / 1e9:.2f}B (l={m['layers']} h={m['hidden']} a={m['heads']} s={m['seq']} "
             f"V={m['vocab']}), {out['tokens']:.3g} tokens, global batch {out['global_batch']}",
             f"on {out['devices']} devices of {out['cluster']} ({out['stack']}); "
             f"{out['layouts_fit']} of {out['layouts_tried']} layouts fit",
             "", " tp  pp   dp  v zero  mb recompute sp   memGB   step_s compute elemwis tp_comm "
             "pp_comm  bubble dp_comm optimzr    MFU     days", "(memory in GB per device; times in seconds per step)"]
    return "\n".join(lines + [row(e) for e in found])


def main(args) -> int:
    try:
        out, top = run(args)
    except ConfigError as e:
        print(f"portkit plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(report(out, top))
    return 0
