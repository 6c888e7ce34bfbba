"""The cost model against published runs: each estimate within 30% of the published figure."""
import pytest

from portkit.plan.costmodel import GPT, PRESETS, Constraints, load_cluster, search

A100 = load_cluster("dgx-a100-ib200")
H100 = load_cluster("dgx-h100")
GPT3 = PRESETS["175b"][0]


def close(estimate, published, tol=0.30):
    return abs(estimate - published) / published <= tol


def test_gpt3_175b_300b_tokens_96_dgx_a100_about_50_days():
    best = search(GPT3, A100, 96 * 8, 1536, 300e9)[0][0]
    assert best.fits and best.memory_gb["total"] <= 80
    assert close(best.days, 50), best.days
    pinned = search(GPT3, A100, 96 * 8, 1536, 300e9, Constraints(recompute="full"))[0][0]
    assert close(pinned.days, 50, 0.15), pinned.days


def test_gpt3_175b_on_1024_a100_at_140_tflops_per_gpu():
    # Narayanan et al. 2021: 140 TFLOP/s per GPU (hardware FLOPs, full recompute), t=8 p=8, batch 1536
    e = search(GPT3, A100, 1024, 1536, 300e9, Constraints(tp=8, pp=8, recompute="full"))[0][0]
    assert close(e.hfu * A100.peak_tflops, 140, 0.10)
    assert close(e.days, 34)  # their 8TP/(nX) estimate


# Narayanan et al. 2021, Table 1: params(B), heads, hidden, layers, t, p, GPUs, batch, TFLOP/s per GPU
TABLE1 = [(1.7, 24, 2304, 24, 1, 1, 32, 512, 137), (7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
          (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138), (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
          (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163), (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163)]


@pytest.mark.parametrize("billions,heads,hidden,layers,tp,pp,gpus,batch,tflops", TABLE1)
def test_megatron_weak_scaling_table(billions, heads, hidden, layers, tp, pp, gpus, batch, tflops):
    m = GPT(layers=layers, hidden=hidden, heads=heads, vocab=51200)
    assert m.params == pytest.approx(billions * 1e9, rel=0.05)
    e = search(m, A100, gpus, batch, 1e9, Constraints(tp=tp, pp=pp, recompute="full"))[0][0]
    assert close(e.hfu * A100.peak_tflops, tflops)


@pytest.mark.parametrize("recompute,mfu", [("selective", 0.542), ("full", 0.421)])
def test_korthikanti_530b_on_2240_a100(recompute, mfu):
    m = GPT(layers=105, hidden=20480, heads=128, vocab=51200)
    e = search(m, A100, 2240, 2240, 1e9, Constraints(tp=8, pp=35, recompute=recompute, sp=True))[0][0]
    assert close(e.mfu, mfu)


@pytest.mark.parametrize("gpus,mfu", [(96, 0.47), (4608, 0.42)])
def test_megatron_readme_gpt3_strong_scaling_on_h100(gpus, mfu):
    m = GPT(layers=96, hidden=12288, heads=96, vocab=131072)
    e = search(m, H100, gpus, 1152, 1e9)[0][0]
    assert close(e.mfu, mfu)
