"""Corrupt every file of a run directory, one way after another, and resume: the run either
ends with the metrics of an uninterrupted run (falling back to an intact checkpoint, saying
so), or refuses with exit 2 and a message naming the file, having changed nothing."""
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reliability_common import TINY, read_metrics, same_metrics, tree  # noqa: E402

from portkit import cli  # noqa: E402

CHECKPOINTS = ["sft-000004.pt", "sft-final.pt", "reward-000002.pt", "reward-final.pt", "ppo-000002.pt"]
WAYS = {
    "deleted": lambda p: p.unlink(),
    "emptied": lambda p: p.write_bytes(b""),
    "cut in half": lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]),
    "one byte flipped": lambda p: p.write_bytes(_flip(p.read_bytes())),
}
SUPERSEDED = {"checkpoints/sft-000004.pt", "checkpoints/reward-000002.pt"}  # by their stage's final: not read
# What a resume must do with each file so damaged: "resume" (rc 0, reference metrics) or "refuse" (rc 2).
EXPECTED = {**{f"checkpoints/{n}": dict.fromkeys(WAYS, "resume") for n in CHECKPOINTS},
            "checkpoints/manifest.json": {"deleted": "refuse", "emptied": "refuse", "cut in half": "refuse",
                                          "one byte flipped": "either"},
            # half of metrics.jsonl still holds the lines of the first checkpoint; the flip is past them
            "metrics.jsonl": {"deleted": "refuse", "emptied": "refuse", "cut in half": "resume",
                              "one byte flipped": "resume"}}


def _flip(data: bytes) -> bytes:
    i = len(data) * 2 // 3
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


@pytest.fixture(scope="module")
def killed_in_ppo(tmp_path_factory, portkit_cli):
    """A run killed in PPO after its first PPO checkpoint: every kind of file a run holds mid-way."""
    out = tmp_path_factory.mktemp("killed") / "run"
    done = portkit_cli.run(out, env={"PORTKIT_KILL_AFTER_STEPS": "13"})  # 6 sft + 4 reward + 3 of 3 ppo steps
    assert done.returncode == 137, done.stderr
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == sorted(CHECKPOINTS)
    return out


@pytest.fixture
def in_process(monkeypatch):
    """`portkit run ... --resume` in this process (seconds instead of a fresh interpreter each)."""
    monkeypatch.setenv("PORTKIT_BACKEND", "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference run (OMP_NUM_THREADS=1): same arithmetic
    yield lambda out: cli.main(["run", str(TINY), "--out", str(out), "--quiet", "--resume"])
    torch.set_num_threads(threads)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name", EXPECTED)
def test_corrupted_file_is_resumed_past_or_refused(name, way, killed_in_ppo, reference_metrics, in_process,
                                                   tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(killed_in_ppo, out)
    WAYS[way](out / name)
    before = tree(out)
    rc = in_process(out)
    err = capsys.readouterr().err
    expected = EXPECTED[name][way]
    if rc == 2:
        assert expected in ("refuse", "either"), err
        assert str(out / name) in err or str(out / "checkpoints") in err, err
        assert "fix:" in err and "Traceback" not in err
        assert tree(out) == before  # nothing lost, nothing changed
    else:
        assert rc == 0 and expected in ("resume", "either"), err
        same_metrics(read_metrics(out), reference_metrics, f"{name} {way}")
        if name not in SUPERSEDED:
            assert "resuming from the newest intact checkpoint" in err, err


@pytest.mark.parametrize("name", ["report.json", "report.md", "sft.png", "ppo.png"])
def test_damaged_report_files_are_written_again(name, reference_run, in_process, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    (out / name).write_bytes(b"")
    assert in_process(out) == 0, capsys.readouterr().err
    assert (out / name).stat().st_size > 100
