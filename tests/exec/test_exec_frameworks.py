"""Framework scripts written for NVIDIA GPUs run unchanged through `portkit launch -- script.py`
on the cpu backend and the test plugin backend: DeepSpeed ZeRO-2/3 with a JSON config,
a Colossal-AI Booster, Megatron-core GPT with TP=2 x PP=2, apex fused modules. Losses are
compared with the same training edited by hand for the CPU."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers  # noqa: E402


from portkit.conformance.mcore_reference import mcore_reference  # noqa: E402
from portkit.conformance.unchanged import APEX_EDITS, data_parallel_reference  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("backend,stage", [("testvendor", 2), ("cpu", 3)])
def test_launch_deepspeed_zero_json_config_matches_plain_torch(backend, stage):
    pytest.importorskip("deepspeed")
    done = helpers.portkit_launch("ds_train.py", backend, 2, "--deepspeed_config",
                                  str(helpers.SCRIPTS / f"ds_config_zero{stage}.json"))
    got = helpers.result(done)
    assert got["stage"] == stage
    helpers.assert_same_losses(got["losses"], data_parallel_reference("ds_train.py"))


def test_exec_deepspeed_other_accelerator_warns_in_one_line():
    pytest.importorskip("deepspeed")
    done = helpers.portkit_launch("ds_train.py", "testvendor", 1, "--deepspeed_config",
                                  str(helpers.SCRIPTS / "ds_config_zero2.json"), "--force_deepspeed_cpu_accelerator")
    lines = [line for line in done.stderr.splitlines() if line.startswith("portkit:")]
    assert lines == ["portkit: DeepSpeed runs on its own CPU_Accelerator ('cpu'), not on portkit's backend "
                     "'testvendor': remove the script's set_accelerator(...) call or DS_ACCELERATOR setting"]


@pytest.mark.parametrize("backend", helpers.BACKENDS)
def test_exec_apex_fused_modules_match_hand_edited_torch(backend, tmp_path):
    got = helpers.result(helpers.portkit_exec("apex_train.py", backend))
    want = helpers.result(helpers.python(helpers.hand_edited("apex_train.py", APEX_EDITS, tmp_path)))
    helpers.assert_same_losses(got["losses"], want["losses"], rel=1e-5)


def test_exec_apex_amp_and_parallel_name_the_torch_replacement_in_every_import_form():
    got = helpers.result(helpers.portkit_exec("apex_amp.py", "cpu"))
    amp, ddp = "use torch.amp (autocast and GradScaler)", "use torch.nn.parallel.DistributedDataParallel"
    assert all(amp in got[form] for form in ("import apex.amp", "from apex import amp", "from apex.amp import initialize"))
    assert ddp in got["from apex.parallel import DistributedDataParallel"]


@pytest.mark.slow
@pytest.mark.parametrize("backend,plugin", [("testvendor", "low_level_zero"), ("cpu", "torch_ddp")])
def test_launch_colossalai_booster_matches_plain_torch(backend, plugin):
    pytest.importorskip("colossalai")
    got = helpers.result(helpers.portkit_launch("colo_train.py", backend, 2, "--plugin", plugin))
    assert got["plugin"] == plugin
    helpers.assert_same_losses(got["losses"], data_parallel_reference("colo_train.py", clip=float("inf")))


def test_exec_colossalai_other_accelerator_warns_in_one_line():
    pytest.importorskip("colossalai")
    done = helpers.portkit_launch("colo_train.py", "testvendor", 1, "--force_colossalai_cpu_accelerator")
    lines = [line for line in done.stderr.splitlines() if line.startswith("portkit:")]
    assert lines == ["portkit: Colossal-AI runs on its own CpuAccelerator ('cpu'), not on portkit's backend "
                     "'testvendor': remove the script's colossalai.accelerator.set_accelerator(...) call"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", helpers.BACKENDS)
def test_launch_megatron_gpt_tp2_pp2_matches_plain_torch(backend):
    """TP=2 x PP=2 in 4 processes ('nccl' -> gloo) against the same GPT trained in plain torch
    in one process (portkit/conformance/mcore_reference.py: megatron-core itself calls CUDA, so
    no hand edit of the script alone runs on plain CPU torch). With the parallel sizes in the
    TransformerConfig, as the script sets them, every layout computes the same losses: without
    pipeline_model_parallel_size each stage builds all num_layers layers (4 instead of 2 at
    PP=2) and the losses differ by about 1e-3 relative from the first step."""
    pytest.importorskip("megatron.core")
    got = helpers.result(helpers.portkit_launch("mcore_gpt.py", backend, 4, "--tp", "2", "--pp", "2"))
    assert (got["tp"], got["pp"]) == (2, 2)
    helpers.assert_same_losses(got["losses"], mcore_reference(helpers.SCRIPTS / "mcore_gpt.py"), rel=1e-5)
