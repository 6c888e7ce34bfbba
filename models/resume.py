"""Getting a run directory ready: start over, or find what --resume can continue from.

--resume continues from the longest prefix of the manifest whose checkpoints are intact
(each stage's newest checkpoint in it present with its checksum) and whose metrics.jsonl
lines are the ones the last of them was taken with (count and sha256). A shorter prefix than
the whole manifest is said, with the reason; when none fits, or the manifest is missing while
checkpoint files exist, or the recipe no longer fits the checkpoints, it refuses (exit 2)
and changes nothing. Only a run started over deletes checkpoints; it writes an empty manifest
first, so files without any manifest can only mean a lost one.
"""
from __future__ import annotations

from pathlib import Path

from portkit import atomic
from portkit.models.checkpoint import FIX, CheckpointError, Checkpoints, Entry, metrics_digest


def prepare_out(out: Path, resume: bool, ckpt: Checkpoints, note) -> None:
    """Rank 0: make `out` ready for the run (resume point chosen, metrics cut to it)."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    if resume:
        entries = resume_point(ckpt, metrics, note)
        if entries:
            return
        note(f"--resume: no checkpoint in {out}; starting from the beginning")
    elif ckpt.files_on_disk() or metrics.exists():
        note(f"starting over in {out}: previous metrics and checkpoints there are replaced")
    for old in ckpt.files_on_disk():
        old.unlink()
    ckpt.dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_manifest([])
    atomic.write(metrics, b"")


def resume_point(ckpt: Checkpoints, metrics: Path, note) -> list[Entry]:
    """The entries to resume from (the manifest and metrics cut to them), [] when none exist."""
    doc = ckpt.read()
    if doc is None:  # a run writes its manifest first: files without one mean it was lost
        found = ckpt.files_on_disk()
        if found:
            raise CheckpointError(f"missing, while {len(found)} checkpoint file(s) are there (kept untouched)",
                                  file=ckpt.manifest, fix=FIX)
        return []
    if not doc.entries:  # files there were never committed
        return []
    check_meta(doc.meta, ckpt)
    lines = metrics.read_bytes().splitlines(keepends=True) if metrics.is_file() else []
    damage: dict[tuple[str, str], str | None] = {}
    problems = []
    for k in range(len(doc.entries), 0, -1):
        why = unusable(ckpt, doc.entries[:k], lines, metrics, damage)
        if why is None:
            return _cut(ckpt, doc.entries[:k], problems, lines, metrics, note)
        problems.append(why)
    raise CheckpointError("no checkpoint can be resumed from:\n  " + "\n  ".join(problems), file=ckpt.dir, fix=FIX)


def _cut(ckpt, entries: list[Entry], problems: list[str], lines: list[bytes], metrics: Path, note) -> list[Entry]:
    if problems:
        note(f"--resume: {problems[-1]}\n  resuming from the newest intact checkpoint instead: {label(entries[-1])}")
        ckpt.write_manifest(entries)
    if len(lines) != entries[-1].metrics_lines:
        atomic.write(metrics, b"".join(lines[:entries[-1].metrics_lines]))
    return entries


def unusable(ckpt: Checkpoints, entries: list[Entry], lines: list[bytes], metrics: Path, damage: dict) -> str | None:
    """Why the run cannot continue from the last of `entries`, or None."""
    newest = {e.stage: e for e in entries}
    for e in newest.values():
        for name, digest in e.files.items():
            if (name, digest) not in damage:
                damage[name, digest] = ckpt.damage(name, digest)
            if damage[name, digest]:
                return f"{ckpt.dir / name}: {damage[name, digest]} ({label(e)})"
    last = entries[-1]
    if len(lines) < last.metrics_lines:
        return (f"{metrics}: {len(lines)} lines, but checkpoint {label(last)} was taken after "
                f"{last.metrics_lines}: metrics were lost")
    if last.metrics_sha256 and metrics_digest(lines[:last.metrics_lines]) != last.metrics_sha256:
        return f"{metrics}: its first {last.metrics_lines} lines are not those of checkpoint {label(last)}"
    return None


def label(e: Entry) -> str:
    return f"{e.stage} {'final' if e.final else f'step {e.step}'}"


def check_meta(saved: dict, ckpt: Checkpoints) -> None:
    """The recipe must still describe the model the checkpoints hold."""
    for key, now in ckpt.meta.items():
        old = saved.get(key)
        if old is None or old == now:
            continue
        diff = [k for k in now if old.get(k) != now[k]] if isinstance(now, dict) and isinstance(old, dict) else []
        detail = ", ".join(f"{key}.{k}: {old.get(k)!r} then, {now[k]!r} now" for k in diff) or f"{old!r} then, {now!r} now"
        raise CheckpointError(f"the recipe changed since the checkpoints were written ({detail})",
                              file=ckpt.manifest, key=f"meta.{key}", allowed="the values the run was started with",
                              fix=f"put back recipe {key} as it was, or run without --resume (or with another --out)")
