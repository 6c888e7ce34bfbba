"""Framework scripts written for NVIDIA GPUs run unchanged through `portkit launch -- script.py`
on the cpu backend and the test plugin backend: DeepSpeed ZeRO-2/3 with a JSON config,
a Colossal-AI Booster, Megatron-core GPT with TP=2 x PP=2, apex fused modules. Losses are
compared with the same training edited by hand for the CPU."""
import os
import runpy
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers  # noqa: E402


def data_parallel_reference(script: str, clip: float = 1.0) -> list[float]:
    """The script's model and batches trained with plain torch AdamW on the whole global batch:
    what a correct data-parallel ZeRO run reproduces (the hand edit of a ZeRO script)."""
    ns = runpy.run_path(str(helpers.SCRIPTS / script), run_name="reference")
    model = ns["build_model"]()
    opt = torch.optim.AdamW(model.parameters(), lr=ns["LR"], weight_decay=0.01)
    losses = []
    for x, y in ns["batches"]():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
    return losses


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


APEX_EDITS = [
    ("from apex.normalization import FusedLayerNorm, FusedRMSNorm\n", ""),
    ("from apex.optimizers import FusedAdam\n", ""),
    ("import scaled_upper_triang_masked_softmax_cuda\n", ""),
    ("        softmax_results = scaled_upper_triang_masked_softmax_cuda.forward(inputs, scale_t[0])\n",
     "        causal = torch.ones(inputs.shape[-2:], dtype=torch.bool).triu(1)\n"
     "        softmax_results = torch.softmax((inputs * scale).masked_fill(causal, float('-inf')), -1)\n"),
    ("        return scaled_upper_triang_masked_softmax_cuda.backward(output_grads, softmax_results, scale_t[0]), None",
     "        y = softmax_results\n"
     "        return scale_t[0] * y * (output_grads - (output_grads * y).sum(-1, keepdim=True)), None"),
    ("FusedLayerNorm(d)", "torch.nn.LayerNorm(d)"), ("FusedRMSNorm(d)", "torch.nn.RMSNorm(d, eps=1e-5)"),
    ("FusedAdam(model.parameters(), lr=1e-2, weight_decay=0.1, adam_w_mode=True)",
     "torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)"),
    ("Block().cuda()", "Block()"), ("torch.randn(4, 16, 32).cuda(), torch.randn(4, 16, 32).cuda()",
                                    "torch.randn(4, 16, 32), torch.randn(4, 16, 32)"),
]


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
