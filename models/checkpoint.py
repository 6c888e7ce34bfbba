"""Per-stage checkpoints written atomically, with sha256 checksums checked on load.

Layout of DIR/checkpoints/: one file per checkpoint (`sft-000050.pt`, `sft-final.pt`, and
`-rankN` before `.pt` when each rank holds a different shard) and manifest.json listing them
in order. A file is written atomically (portkit.atomic); then the manifest is rewritten the
same way: its rename is the commit, so a kill at any moment leaves the last complete
checkpoint in force. Each stage keeps its newest two checkpoints, so a corrupt newest one
still leaves one to resume from. An entry records how many lines metrics.jsonl had and
their sha256, so resume can tell lost or altered metrics from good ones. Files are read with
torch.load(weights_only=True); the manifest is validated like a recipe (portkit.config).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from portkit import atomic, faults
from portkit.config import ConfigError, build
from portkit.errors import UserError, contained

KEEP = 2  # checkpoints kept per stage
FIX = "restore the file, or run without --resume (or with another --out) to start over"


class CheckpointError(UserError, RuntimeError):
    pass


@dataclass(kw_only=True, slots=True)
class Entry:
    stage: str
    step: int              # steps done in the stage
    final: bool            # the stage is complete
    files: dict[str, str]  # file name -> sha256
    metrics_lines: int     # lines of metrics.jsonl written when it was taken
    metrics_sha256: str | None = None  # of those lines

    def __post_init__(self):
        if self.step < 0 or self.metrics_lines < 0:
            raise ValueError(f"step and metrics_lines must be >= 0, got {self.step}, {self.metrics_lines}")
        tag = f"{self.stage}-{'final' if self.final else f'{self.step:06d}'}"
        for name, digest in self.files.items():
            if not re.fullmatch(re.escape(tag) + r"(-rank\d+)?\.pt", name):
                raise ValueError(f"files: {name!r} is not a file of checkpoint {tag} ({tag}.pt or {tag}-rankN.pt)")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"files.{name}: {digest!r} is not a sha256 hex digest")


@dataclass(kw_only=True, slots=True)
class Manifest:
    entries: list[Entry]
    meta: dict[str, Any] = field(default_factory=dict)  # what shapes the state: model, strategy


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def metrics_digest(lines: list[bytes]) -> str:
    return hashlib.sha256(b"".join(lines)).hexdigest()


class Checkpoints:
    def __init__(self, directory: str | Path, rank: int = 0, sharded: bool = False, meta: dict | None = None):
        self.dir = Path(directory) / "checkpoints"
        self.rank, self.sharded, self.meta = rank, sharded, meta or {}
        self.manifest = self.dir / "manifest.json"

    def read(self) -> Manifest | None:
        """The manifest, validated (None when there is none); a bad one is an error naming it."""
        if not self.manifest.exists():
            return None
        try:
            data = json.loads(self.manifest.read_bytes())
            doc = build(Manifest, data, f"{self.manifest}: manifest")
        except (ValueError, ConfigError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise CheckpointError(f"unreadable manifest ({e})", file=self.manifest, fix=FIX) from None
        for i, e in enumerate(doc.entries):
            for name in e.files:
                contained(self.dir, name, self.manifest, f"entries[{i}].files")
        return doc

    def entries(self) -> list[Entry]:
        doc = self.read()
        return doc.entries if doc else []

    def files_on_disk(self) -> list[Path]:
        return sorted(self.dir.glob("*.pt")) if self.dir.is_dir() else []

    def _name(self, stage: str, step: int | None, rank: int) -> str:
        tag = "final" if step is None else f"{step:06d}"
        return f"{stage}-{tag}" + (f"-rank{rank}" if self.sharded else "") + ".pt"

    def write_shard(self, stage: str, step: int, final: bool, state: dict) -> tuple[str, str]:
        """Every rank that holds a distinct shard writes its own file; returns (name, sha256)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = self._name(stage, None if final else step, self.rank)
        path = atomic.write(self.dir / name, lambda f: torch.save(state, f))
        return name, sha256(path)

    def commit(self, stage: str, step: int, final: bool, files: dict[str, str], metrics_lines: int,
               metrics_sha256: str | None = None) -> None:
        """Rank 0, after every shard is written: append to the manifest, then drop the files of
        checkpoints beyond the newest KEEP of this stage (never a file a kept one lists)."""
        faults.point("commit")
        new = Entry(stage=stage, step=step, final=final, files=files, metrics_lines=metrics_lines,
                    metrics_sha256=metrics_sha256)
        entries = self.entries() + [new]
        ours = [e for e in entries if e.stage == stage]
        kept = [e for e in entries if e.stage != stage or e in ours[-KEEP:]]
        self.write_manifest(kept)
        faults.point("committed")
        listed = {n for e in kept for n in e.files}
        for e in ours[:-KEEP]:
            for name in set(e.files) - listed:
                (self.dir / name).unlink(missing_ok=True)

    def write_manifest(self, entries: list[Entry]) -> None:
        doc = {"entries": [asdict(e) for e in entries], "meta": self.meta}
        atomic.write(self.manifest, json.dumps(doc, indent=1))

    def find(self, stage: str) -> Entry | None:
        """The newest checkpoint of a stage, final or not."""
        matches = [e for e in self.entries() if e.stage == stage]
        return matches[-1] if matches else None

    def load(self, entry: Entry, map_location=None) -> dict:
        """This rank's state of a checkpoint, after checking its checksum."""
        name = self._name(entry.stage, None if entry.final else entry.step, self.rank)
        if name not in entry.files:
            raise CheckpointError(f"checkpoint {entry.stage} step {entry.step} has no file {name} (it was "
                                  f"written with another number of ranks?)", file=self.manifest,
                                  fix="resume with the number of processes the run was started with")
        problem = self.damage(name, entry.files[name])
        if problem:
            raise CheckpointError(problem, file=self.dir / name, fix=FIX)
        return torch.load(self.dir / name, map_location=map_location, weights_only=True)

    def damage(self, name: str, digest: str) -> str | None:
        """Why file `name` is not the one the manifest lists, or None."""
        path = self.dir / name
        if not path.is_file():
            return "listed in the manifest but missing"
        found = sha256(path)
        if found != digest:
            return f"checksum mismatch (sha256 {found[:12]}..., manifest says {digest[:12]}...): the file is corrupt"
        return None
