
import pytest
import torch

from portkit.models.checkpoint import CheckpointError, Checkpoints


def _save(ck, stage, step, final, value):
    name, digest = ck.write_shard(stage, step, final, {"w": torch.full((3,), float(value))})
    ck.commit(stage, step, final, {name: digest}, metrics_lines=step)


def test_manifest_keeps_the_newest_two_of_each_stage(tmp_path):
    ck = Checkpoints(tmp_path)
    _save(ck, "sft", 2, False, 2)
    _save(ck, "sft", 4, False, 4)
    assert (ck.dir / "sft-000002.pt").exists()  # kept: the one to fall back on
    _save(ck, "sft", 6, True, 6)
    assert not (ck.dir / "sft-000002.pt").exists()  # superseded by two newer ones
    _save(ck, "reward", 2, False, 7)
    assert [(e.stage, e.step, e.final) for e in ck.entries()] == [("sft", 4, False), ("sft", 6, True),
                                                                  ("reward", 2, False)]
    assert ck.load(ck.find("reward"))["w"][0] == 7
    assert not list(ck.dir.glob(".*tmp*"))


def test_corrupted_checkpoint_is_detected(tmp_path):
    ck = Checkpoints(tmp_path)
    _save(ck, "sft", 2, False, 1)
    path = ck.dir / "sft-000002.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ck.load(ck.find("sft"))


def test_half_written_file_does_not_count(tmp_path):
    ck = Checkpoints(tmp_path)
    _save(ck, "sft", 2, False, 1)
    (ck.dir / "sft-000004.pt.tmp").write_bytes(b"partial")  # a kill during the write
    assert ck.find("sft").step == 2
    assert ck.load(ck.find("sft"))["w"][0] == 1


def test_broken_manifest_and_missing_shard_are_named(tmp_path):
    ck = Checkpoints(tmp_path)
    _save(ck, "sft", 2, False, 1)
    other = Checkpoints(tmp_path, rank=1, sharded=True)
    with pytest.raises(CheckpointError, match="has no file sft-000002-rank1.pt"):
        other.load(other.find("sft"))
    ck.manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable manifest"):
        ck.entries()
