"""The cost model's pieces: parameter and FLOP formulas, memory, layout validity, cluster files."""
import dataclasses

import pytest

from portkit.config import ConfigError
from portkit.plan.costmodel import (GPT, PRESETS, Constraints, Layout, estimate, layouts, load_cluster, memory,
                               search, shipped_clusters, state_bytes)

GPT3 = PRESETS["175b"][0]


def test_preset_parameter_counts_match_their_names():
    expected = {"125m": 0.125e9, "350m": 0.35e9, "1.3b": 1.3e9, "6.7b": 6.7e9, "13b": 13e9, "175b": 175e9}
    for name, n in expected.items():
        assert PRESETS[name][0].params == pytest.approx(n, rel=0.08), name


def test_full_recompute_flops_follow_megatron_formula():
    m, B = GPT3, 1536
    l, h, s, v = m.layers, m.hidden, m.seq, m.vocab
    megatron = 96 * B * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
    assert m.hardware_flops(B, "full") == pytest.approx(megatron, rel=1e-12)
    assert m.model_flops(B) == pytest.approx(megatron * 3 / 4, rel=0.01)
    assert m.model_flops(B) < m.hardware_flops(B, "selective") < m.hardware_flops(B, "full")


def test_activation_memory_matches_korthikanti_per_layer_formulas():
    c = load_cluster("dgx-a100-ib200")
    lay = Layout(tp=8, pp=1, dp=1, zero=0, micro_batch=1, recompute="none", micro_batches=1, sp=True)
    m = GPT(layers=1, hidden=12288, heads=96, vocab=8)  # one layer, negligible logits
    sbh = m.seq * m.hidden
    working = sbh * (34 / 8 + 5 * 96 * m.seq / m.hidden / 8)
    assert memory(m, c, lay)["activations"] == pytest.approx(2 * working, rel=1e-3)
    selective = memory(m, c, dataclasses.replace(lay, recompute="selective"))["activations"]
    assert selective == pytest.approx(working + sbh * 34 / 8, rel=1e-3)


def test_zero_stages_shard_more_state_each():
    sizes = [state_bytes(1e9, 8, z) for z in range(4)]
    assert sizes[0] == 16e9
    assert sizes == sorted(sizes, reverse=True) and sizes[3] == pytest.approx(2e9)


def test_every_layout_is_a_valid_combination():
    c = load_cluster("dgx-a100-ib200")
    found = list(layouts(GPT3, c, 64, 256, Constraints(sp=True, recompute=None)))
    assert found
    for lay in found:
        assert lay.tp * lay.pp * lay.dp == 64
        assert c.devices_per_node % lay.tp == 0 and GPT3.heads % lay.tp == 0 and GPT3.layers % lay.pp == 0
        assert lay.dp * lay.micro_batch * lay.micro_batches == 256
        assert lay.zero in c.stack.zero and (lay.pp == 1 or lay.zero <= 1)
        assert (GPT3.layers // lay.pp) % lay.virtual == 0


def test_search_returns_only_fitting_layouts_fastest_first():
    c = load_cluster("dgx-h100")
    found, tried = search(PRESETS["13b"][0], c, 16, 256, 1e9)
    assert 0 < len(found) < tried
    assert all(e.fits and e.memory_gb["total"] <= c.memory_gb - c.memory_reserve_gb for e in found)
    steps = [e.step_s for e in found]
    assert steps == sorted(steps)


def test_a_layout_too_big_for_memory_does_not_fit():
    c = load_cluster("dgx-a100-ib200")
    lay = Layout(tp=1, pp=1, dp=8, zero=0, micro_batch=1, recompute="full", micro_batches=1)
    e = estimate(GPT3, c, lay, 1e9)
    assert not e.fits and e.memory_gb["model_states"] > 2000


def test_more_nodes_train_faster():
    c = load_cluster("dgx-h100")
    days = [search(PRESETS["6.7b"][0], c, n * 8, 1024, 1e11)[0][0].days for n in (2, 8)]
    assert days[1] < days[0] / 2.5


def test_shipped_clusters_load_and_name_themselves():
    assert set(shipped_clusters()) >= {"dgx-a100-ib200", "dgx-h100", "sugon-dcu"}
    for name in shipped_clusters():
        assert load_cluster(name).name == name


def test_cluster_file_with_unknown_key_names_file_and_key(tmp_path):
    text = (load_cluster.__globals__["resources"].files("portkit.plan") / "clusters" / "dgx-h100.yaml").read_text()
    path = tmp_path / "mine.yaml"
    path.write_text(text + "nvlink_speed: 9\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml.*'nvlink_speed'"):
        load_cluster(str(path))
    path.write_text(text.replace("compute_efficiency: 0.58", "compute_efficiency: 1.7"))
    with pytest.raises(ConfigError, match="compute_efficiency must be in"):
        load_cluster(str(path))


def test_unknown_cluster_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="dgx-a100-ib200"):
        load_cluster("dgx-z900")
