"""Per-stage checkpoints written atomically, with sha256 checksums checked on load.

Layout of DIR/checkpoints/: one file per checkpoint (`sft-000050.pt`, `sft-final.pt`, and
`-rankN` before `.pt` when each rank holds a different shard) and manifest.json listing them
in order. A file is written to a temporary name, fsynced and renamed; then the manifest is
rewritten the same way: its rename is the commit, so a kill at any moment leaves the last
complete checkpoint in force. Files are read with torch.load(weights_only=True).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    pass


@dataclass
class Entry:
    stage: str
    step: int            # steps done in the stage
    final: bool          # the stage is complete
    files: dict[str, str]  # file name -> sha256
    metrics_lines: int   # lines of metrics.jsonl written when it was taken


def _fsync_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Checkpoints:
    def __init__(self, directory: str | Path, rank: int = 0, sharded: bool = False):
        self.dir = Path(directory) / "checkpoints"
        self.rank, self.sharded = rank, sharded
        self.manifest = self.dir / "manifest.json"

    def entries(self) -> list[Entry]:
        if not self.manifest.exists():
            return []
        try:
            return [Entry(**e) for e in json.loads(self.manifest.read_text())["entries"]]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{self.manifest}: unreadable manifest ({e}); delete the run directory "
                                  f"to start over") from None

    def _name(self, stage: str, step: int | None, rank: int) -> str:
        tag = "final" if step is None else f"{step:06d}"
        return f"{stage}-{tag}" + (f"-rank{rank}" if self.sharded else "") + ".pt"

    def write_shard(self, stage: str, step: int, final: bool, state: dict) -> tuple[str, str]:
        """Every rank that holds a distinct shard writes its own file; returns (name, sha256)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = self._name(stage, None if final else step, self.rank)
        path = self.dir / name
        _fsync_write(path, lambda f: torch.save(state, f))
        return name, sha256(path)

    def commit(self, stage: str, step: int, final: bool, files: dict[str, str], metrics_lines: int) -> None:
        """Rank 0, after every shard is written: append to the manifest, drop superseded files."""
        entries = [e for e in self.entries() if e.stage != stage or e.final]
        old = [e for e in self.entries() if e not in entries]
        entries.append(Entry(stage, step, final, files, metrics_lines))
        text = json.dumps({"entries": [asdict(e) for e in entries]}, indent=1).encode()
        _fsync_write(self.manifest, lambda f: f.write(text))
        for e in old:
            for name in e.files:
                if name not in files:
                    (self.dir / name).unlink(missing_ok=True)

    def find(self, stage: str) -> Entry | None:
        """The newest checkpoint of a stage, final or not."""
        matches = [e for e in self.entries() if e.stage == stage]
        return matches[-1] if matches else None

    def load(self, entry: Entry, map_location=None) -> dict:
        """This rank's state of a checkpoint, after checking its checksum."""
        name = self._name(entry.stage, None if entry.final else entry.step, self.rank)
        if name not in entry.files:
            raise CheckpointError(f"{self.manifest}: checkpoint {entry.stage} step {entry.step} has no file "
                                  f"{name} (it was written with another number of ranks?)")
        path = self.dir / name
        if not path.exists():
            raise CheckpointError(f"{path}: listed in the manifest but missing")
        found = sha256(path)
        if found != entry.files[name]:
            raise CheckpointError(f"{path}: checksum mismatch (sha256 {found[:12]}..., manifest says "
                                  f"{entry.files[name][:12]}...): the file is corrupt; delete the run "
                                  f"directory or restore the file")
        return torch.load(path, map_location=map_location, weights_only=True)
