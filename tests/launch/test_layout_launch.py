"""Rank ordering: tensor-parallel groups stay inside a node, pipeline stages cross nodes."""
import itertools

import pytest

from portkit.launch import LaunchError, layout_table, rank_layout


@pytest.mark.parametrize("nodes,per_node,tp,pp", [(2, 4, 2, 2), (4, 8, 8, 4), (2, 8, 4, 2), (3, 2, 2, 3), (1, 2, 1, 1)])
def test_tp_groups_never_leave_a_node_and_stages_split_by_node(nodes, per_node, tp, pp):
    places = rank_layout(nodes * per_node, per_node, tp, pp)
    assert [p.rank for p in places] == list(range(nodes * per_node))
    for _, group in itertools.groupby(sorted(places, key=lambda p: (p.pp, p.dp)), key=lambda p: (p.pp, p.dp)):
        group = list(group)
        assert len(group) == tp and len({p.node for p in group}) == 1
    if (nodes * per_node // pp) % per_node == 0:  # a stage fills whole nodes: no node holds two stages
        assert all(len({p.pp for p in places if p.node == n}) == 1 for n in range(nodes))
    assert len({(p.tp, p.dp, p.pp) for p in places}) == len(places)


def test_layout_matches_megatron_order():
    places = rank_layout(16, 8, tp=2, pp=2)
    assert [(p.tp, p.dp, p.pp) for p in places[:4]] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    assert places[8].pp == 1 and places[8].node == 1 and places[8].dp == 0


def test_tp_that_does_not_divide_the_node_is_refused_with_choices():
    with pytest.raises(LaunchError, match=r"tensor-parallel size 3 .*\[1, 2, 4, 8\]"):
        rank_layout(16, 8, tp=3)


def test_world_not_divisible_by_tp_times_pp_is_refused():
    with pytest.raises(LaunchError, match="not divisible by tp\\*pp"):
        rank_layout(12, 4, tp=4, pp=2)


def test_table_lists_ranks_and_summarises():
    text = layout_table(rank_layout(64, 8, tp=8, pp=8), limit=4)
    assert "world 64 = tp 8 x dp 1 x pp 8" in text and "60 more ranks" in text
    assert "each pipeline stage on 1 node(s)" in text
