"""Workers started with the 'spawn' method (the PyTorch DDP tutorial's torch.multiprocessing.spawn,
multiprocessing.get_context('spawn').Process) are adapted like the script that starts them:
scripts/ddp_spawn.py through `portkit exec` gives the losses of the same script edited by hand
for the CPU; a worker that cannot be adapted says so in one `portkit:` line."""
import os
import pickle
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers  # noqa: E402

from portkit import adapt  # noqa: E402

# ddp_spawn.py as an engineer edits it for the CPU
SPAWN_EDITS = [('dist.init_process_group("nccl"', 'dist.init_process_group("gloo"'),
               ("    torch.cuda.set_device(rank)\n", ""), ("ToyModel().to(rank)", "ToyModel()"),
               ("DDP(model, device_ids=[rank])", "DDP(model)"), ("torch.device(rank)", "torch.device('cpu')"),
               (".cuda(rank)", "")]


def test_exec_spawned_ddp_workers_match_hand_edited_cpu(tmp_path):
    """On the cpu backend only: each run of two spawned workers costs ~11 s of CI. Both start
    methods pass through multiprocessing.spawn's preparation data; `--start=process` on
    testvendor gives the same losses (portkit exec --backend testvendor -- ddp_spawn.py --start=process)."""
    got = helpers.result(helpers.portkit_exec("ddp_spawn.py", "cpu"))
    edited = helpers.hand_edited("ddp_spawn.py", SPAWN_EDITS, tmp_path)
    helpers.assert_same_losses(got["losses"], helpers.result(helpers.python(edited))["losses"])


def test_spawned_worker_that_cannot_be_adapted_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(adapt, "_state", {"backend": None, "said": set()})
    with pytest.raises(SystemExit) as exit_:
        pickle.loads(pickle.dumps(adapt._InChild("nope")))  # what the worker unpickles first
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("portkit: a spawned worker could not be adapted to backend 'nope'") and "portkit launch" in err
