"""`portkit bench`: measure portkit against native PyTorch on this device.

  portkit bench ops    fused ops beside their native peers (GB/s, time, peak memory)
  portkit bench train  training throughput (portkit.bench.train)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from portkit import atomic
from portkit.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_target", metavar="TARGET", required=True)
    _configure_ops(sub.add_parser("ops", help="fused ops vs native PyTorch, with the copy bandwidth as the limit",
                                  description="Each fused op and its native PyTorch peer side by side."))
    train = sub.add_parser("train", help="training throughput (tokens/s, MFU) of a recipe",
                           description="Training throughput of a recipe against its plain-PyTorch run.")
    from portkit.bench import train as bench_train
    bench_train.configure(train)


def _configure_ops(p: argparse.ArgumentParser) -> None:
    from portkit.bench.ops import OPS, DTYPES, BenchConfig
    d = BenchConfig()
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of: {', '.join(OPS)}")
    p.add_argument("--dtype", default=d.dtype, choices=list(DTYPES), help="activation dtype (default %(default)s)")
    p.add_argument("--rows", type=int, help=f"tokens of the activation ops (default {d.rows})")
    p.add_argument("--hidden", type=int, help=f"model width (default {d.hidden})")
    p.add_argument("--vocab", type=int, help=f"vocabulary of linear_cross_entropy (default {d.vocab})")
    p.add_argument("--adamw-params", type=int, help=f"parameters of the AdamW step (default {d.adamw_params})")
    p.add_argument("--iters", type=int, help=f"timed iterations, median taken (default {d.iters})")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd native peers")
    p.add_argument("--impls", default="auto",
                   help="comma-separated registry modes to time portkit's side under, e.g. auto,triton,aten "
                        "(default %(default)s: the implementation dispatch picks)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run that also works on the CPU")
    p.add_argument("--backend", help="backend to run on (default: the best available)")
    p.add_argument("--json-out", type=Path, help="write the results as JSON here")
    p.add_argument("--markdown-out", type=Path, help="write the results as a markdown table here")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="print the markdown table of an earlier --json-out file and exit (measures nothing)")


def main(args: argparse.Namespace) -> int:
    if args.bench_target == "train":
        from portkit.bench import train as bench_train
        return bench_train.main(args)
    return _main_ops(args)


def _config(args: argparse.Namespace):
    from portkit.bench.ops import BenchConfig
    given = {k: getattr(args, k) for k in ("rows", "hidden", "vocab", "adamw_params", "iters")
             if getattr(args, k) is not None}
    given.update(ops=_names(args.ops), dtype=args.dtype, compile=args.compile, impls=_names(args.impls))
    try:
        return BenchConfig.quick_sizes(**given) if args.quick else BenchConfig(**given)
    except ValueError as e:  # a bad --ops, --dtype or size: the CLI says it in one line, exit 2
        raise UserError(str(e)) from e


def _names(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


def _main_ops(args: argparse.Namespace) -> int:
    from portkit.bench import ops as benchmark
    if args.render is not None:
        print(benchmark.markdown(json.loads(args.render.read_text())), end="")
        return 0
    cfg = _config(args)
    import portkit
    portkit.select_backend(args.backend)
    report = benchmark.run(cfg, progress=lambda op: print(f"  measuring {op} ...", file=sys.stderr, flush=True))
    _print_table(report, benchmark)
    if args.json_out:
        write_output(args.json_out, json.dumps(report, indent=1) + "\n")
    if args.markdown_out:
        write_output(args.markdown_out, benchmark.markdown(report))
    return 0


def write_output(path: Path, text: str) -> None:
    """Write a result file (creating its folder) and say so on stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write(path, text)
    print(f"wrote {path}", file=sys.stderr)


def _print_table(report: dict, benchmark) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"portkit bench ops on {report['device']} ({report['backend']}), "
                        f"copy {report['copy_gbps']:.0f} GB/s")
    for h in benchmark.HEADER:
        table.add_column(h, justify="right" if h not in ("op", "mode", "shape", "native peer", "note") else "left")
    for row in benchmark.table_rows(report):
        table.add_row(*row)
    console = Console()
    console.width = max(console.width, 180)  # a wide table reads better than a wrapped one
    console.print(table)


if __name__ == "__main__":  # python -m portkit.bench.cli ops ... (the same as `portkit bench ops ...`)
    from portkit import cli
    sys.exit(cli.main(["bench", *sys.argv[1:]]))
