"""Helpers of the fault-injection suite: the tiny recipe run as a subprocess (so it can be
killed for real), a comparison of metrics that ignores only timings, a file tree snapshot."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portkit.models import compare as C
from portkit.models import recipe as R

TINY = Path(R.__file__).parent / "recipes" / "tiny.yaml"
SEED_ENV = "PORTKIT_FAULT_SEED"
TIMING = set(C.TIMING)


class Portkit:
    """`portkit ARGS` in a fresh process on the cpu backend; returns the CompletedProcess."""

    def __init__(self, env=None):
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PORTKIT_BACKEND": "cpu", **(env or {})}
        for name in ("PORTKIT_KILL_AT", "PORTKIT_KILL_AFTER_STEPS", "PORTKIT_DEBUG"):
            self.env.pop(name, None)

    def __call__(self, *args, env=None, timeout=300):
        return subprocess.run([sys.executable, "-m", "portkit.cli", *map(str, args)], capture_output=True,
                              text=True, env={**self.env, **(env or {})}, timeout=timeout)

    def run(self, out, *extra, env=None, recipe=TINY):
        return self("run", recipe, "--out", out, "--quiet", *extra, env=env)


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def same_metrics(got: list[dict], want: list[dict], context: str = "") -> None:
    """Identical rows, step for step; floats to 1e-6 relative (timings are not compared)."""
    assert [(r["stage"], r["step"]) for r in got] == [(r["stage"], r["step"]) for r in want], context
    for x, y in zip(got, want):
        for k in set(y) - TIMING:
            if isinstance(y[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-7), (context, x["stage"], x["step"], k)
            else:
                assert x[k] == y[k], (context, x["stage"], x["step"], k)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: 'nothing lost, nothing written' in one value."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


