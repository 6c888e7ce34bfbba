"""A CUDA script runs unchanged through `portkit exec` / `portkit launch -- script.py` /
`import portkit.auto`, on the cpu backend and on the test plugin backend: each adaptation
checked on the calls scripts make (scripts/cuda_calls.py), and a nanoGPT-style train.py
whose losses equal those of the same script edited by hand for the CPU."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers  # noqa: E402
from helpers import BACKENDS  # noqa: E402

from portkit.conformance.unchanged import TRAIN_EDITS  # noqa: E402


@pytest.fixture(scope="module", params=BACKENDS)
def calls(request):
    """What each CUDA call of scripts/cuda_calls.py gave through `portkit exec`."""
    done = helpers.portkit_exec("cuda_calls.py", request.param, CUDA_VISIBLE_DEVICES="0,1")
    return request.param, helpers.result(done)


def test_exec_redirects_device_strings(calls):
    _, got = calls
    for key in ("factory", "to_cuda_1", "tensor_cuda", "module_cuda", "generator", "pin_memory"):
        assert got[key] == "cpu", key


def test_exec_redirects_int_devices_as_cuda_reads_them(calls):
    _, got = calls
    assert got["int_devices"] == ["cpu"] * 5 and got["ints_kept"] == [1, 1, 0]  # sizes and values stay ints


def test_exec_redirects_torch_cuda_calls(calls):
    backend, got = calls
    assert got["is_available"] and got["device_count"] == 1 and got["bf16"] and got["rng_restored"] and got["memory"]
    assert got["device_name"] == ("testvendor virtual device" if backend == "testvendor" else got["device_name"])


def test_exec_autocast_cuda(calls):
    assert calls[1]["autocast"] and calls[1]["cuda_amp_autocast"]


def test_exec_grad_scaler_cuda(calls):
    assert calls[1]["grad_scaler"] == calls[1]["cuda_amp_grad_scaler"] == "cpu"


def test_exec_nccl_to_backend_library(calls):
    assert calls[1]["init_process_group"] == calls[1]["new_group"] == "gloo"


def test_exec_cuda_visible_devices_to_backend_variable(calls):
    backend, got = calls
    want = {"CUDA_VISIBLE_DEVICES": "0,1"} | ({"TESTVENDOR_VISIBLE_DEVICES": "0,1"} if backend == "testvendor" else {})
    assert got["visible_devices"] == want


def test_exec_unserved_cuda_call_names_the_fix(calls):
    backend, got = calls
    assert got["unserved"].startswith(f"portkit: torch.cuda.CUDAGraph has no counterpart on backend {backend!r}")


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """Losses of train.py edited by hand for the CPU, per (arguments, processes), run once each."""
    path = helpers.hand_edited("train.py", TRAIN_EDITS, tmp_path_factory.mktemp("edited"))
    cache: dict = {}

    def losses(*args: str, nproc: int = 1) -> list[float]:
        if (args, nproc) not in cache:
            cache[args, nproc] = helpers.result(helpers.python(path, *args, nproc=nproc))["losses"]
        return cache[args, nproc]
    return losses


@pytest.mark.parametrize("backend", BACKENDS)
def test_exec_nanogpt_matches_hand_edited_cpu(backend, edited):
    got = helpers.result(helpers.portkit_exec("train.py", backend))
    assert got["dtype"] == "bfloat16"  # torch.cuda.is_bf16_supported() answered by the backend
    helpers.assert_same_losses(got["losses"], edited())


def test_exec_grad_scaler_float16_matches_hand_edited_cpu(edited):
    got = helpers.result(helpers.portkit_exec("train.py", "cpu", "--dtype=float16"))
    helpers.assert_same_losses(got["losses"], edited("--dtype=float16"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_launch_nanogpt_ddp_nccl_matches_hand_edited_gloo(backend, edited):
    got = helpers.result(helpers.portkit_launch("train.py", backend, 2))
    helpers.assert_same_losses(got["losses"], edited(nproc=2))


def test_auto_import_adapts_a_script_run_by_python(tmp_path, edited):
    script = tmp_path / "auto_train.py"
    script.write_text("import portkit.auto\n" + (helpers.SCRIPTS / "train.py").read_text())
    got = helpers.result(helpers.python(script, PORTKIT_BACKEND="testvendor"))
    helpers.assert_same_losses(got["losses"], edited())


def test_exec_runs_a_module_with_dash_m(tmp_path):
    (tmp_path / "mytrain.py").write_text("import torch, json\nprint(json.dumps({'device': str(torch.ones(1).cuda().device)}))\n")
    done = helpers.run([str(helpers.VENV_BIN / "portkit"), "exec", "--backend", "cpu", "--", "-m", "mytrain"], cwd=tmp_path)
    assert helpers.result(done) == {"device": "cpu"}


def test_exec_dry_run_lists_adaptations():
    done = helpers.run([str(helpers.VENV_BIN / "portkit"), "exec", "--backend", "testvendor", "--dry-run", "--",
                        str(helpers.SCRIPTS / "train.py")])
    out = done.stdout
    assert "backend 'testvendor'" in out and "'nccl' -> 'gloo'" in out and "CUDA_VISIBLE_DEVICES -> TESTVENDOR_VISIBLE_DEVICES" in out
    assert "deepspeed.accelerator:" in out and "apex -> portkit's apex shim" in out
    assert "torch.multiprocessing.spawn" in out and "script imports: torch" in out and "iter 0" not in out


def test_exec_bad_input_exits_2_without_traceback():
    import subprocess
    done = subprocess.run([str(helpers.VENV_BIN / "portkit"), "exec", "--", "nowhere.py"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "portkit exec: no such script: nowhere.py"
    done = subprocess.run([str(helpers.VENV_BIN / "portkit"), "exec", "--backend", "nope", "--", __file__],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown backend 'nope'" in done.stderr and "Traceback" not in done.stderr
