"""Progress of the stages: rich bars on a terminal, a plain line every tenth of a stage
otherwise (logs, CI), nothing with --quiet or on ranks other than 0."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

SHOWN = ("loss", "acc", "eval_acc", "eval_policy_acc", "reward_mean", "kl", "rule_acc")


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in SHOWN if isinstance(metrics.get(k), (int, float)))


class _Bar:
    def __init__(self, stage, total, start, rich_progress):
        self.stage, self.total, self.step, self.rich = stage, total, start, rich_progress
        self.every = max(1, total // 10)
        self.t0 = time.perf_counter()
        self.id = rich_progress.add_task(stage, total=total, completed=start, info="") if rich_progress else None

    def advance(self, metrics: dict):
        self.step += 1
        if self.rich is not None:
            self.rich.update(self.id, advance=1, info=_fmt(metrics))
        elif self.step % self.every == 0 or self.step == self.total:
            print(f"[{self.stage}] {self.step}/{self.total}  {_fmt(metrics)}  "
                  f"({time.perf_counter() - self.t0:.0f}s)", file=sys.stderr, flush=True)


class _Off:
    def advance(self, metrics):
        pass


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self._live = None

    @contextmanager
    def task(self, stage: str, total: int, start: int):
        if not self.enabled:
            yield _Off()
            return
        if not self.tty:
            yield _Bar(stage, total, start, None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
        from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn
        with RichProgress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                          transient=False) as live:
            self._live = live
            yield _Bar(stage, total, start, live)
            self._live = None

    def stop(self):
        if self._live is not None:
            self._live.stop()

    def note(self, text: str):
        if self.enabled:
            print(text, file=sys.stderr, flush=True)
