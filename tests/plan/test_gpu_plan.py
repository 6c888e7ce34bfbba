"""The planner's step time for a GPT that fits on one GPU, against the measured one.

Run on an H100/H200: `pytest tests/plan/test_gpu_plan.py -m gpu -s`; each case prints one
`plan-vs-measured` line (model, micro-batch, planned and measured step seconds, ratio).
"""
import time

import pytest
import torch

import portkit
from portkit.plan.costmodel import GPT as PlanGPT, Layout, estimate, load_cluster

CASES = [("gpt2-124m", 12, 768, 12, 8), ("gpt2-124m", 12, 768, 12, 16), ("gpt2-350m", 24, 1024, 16, 8)]
SEQ, VOCAB = 1024, 50304


def planned_step(layers, hidden, heads, micro_batch) -> float:
    m = PlanGPT(layers=layers, hidden=hidden, heads=heads, seq=SEQ, vocab=VOCAB)
    # one device, no accumulation; SDPA's flash kernel recomputes attention in backward = selective
    lay = Layout(tp=1, pp=1, dp=1, zero=0, micro_batch=micro_batch, recompute="selective", micro_batches=1)
    return estimate(m, load_cluster("dgx-h100"), lay, 1e9).step_s


def measured_step(layers, hidden, heads, micro_batch, steps=10) -> float:
    from portkit.models.gpt import GPT, GPTConfig
    dev = portkit.device()
    model = GPT(GPTConfig(n_layer=layers, n_head=heads, n_embd=hidden, block_size=SEQ, vocab_size=VOCAB)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB, (micro_batch, SEQ), device=dev)
    for i in range(steps + 3):
        if i == 3:
            portkit.synchronize()
            start = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(x, targets=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    portkit.synchronize()
    return (time.perf_counter() - start) / steps


@pytest.mark.gpu
@pytest.mark.parametrize("name,layers,hidden,heads,micro_batch", CASES)
def test_planned_step_time_is_within_2x_of_measured(name, layers, hidden, heads, micro_batch):
    device = portkit.backend().device_name()
    if not any(k in device for k in ("H100", "H200")):
        pytest.skip(f"the comparison uses the dgx-h100 spec; this device is {device}")
    plan = planned_step(layers, hidden, heads, micro_batch)
    real = measured_step(layers, hidden, heads, micro_batch)
    print(f"plan-vs-measured {name} mb={micro_batch} seq={SEQ} device={device!r} "
          f"planned={plan:.4f}s measured={real:.4f}s measured/planned={real / plan:.2f}")
    assert 0.5 <= real / plan <= 2.0
