"""KN selection on synthetic attributions with known answers; facts and shards."""

import polars as pl
import pytest

from knrecall.attribution.kns import Selection, select_kns
from knrecall.data.facts import facts_of, shard_of
from knrecall.data.items import Item
from knrecall.errors import KnrecallError


def frames(rows):
    """rows: (fact, paraphrase, layer, neuron, attribution); prompt max = max attribution of each prompt."""
    neurons = pl.DataFrame(rows, schema=["fact_id", "paraphrase", "layer", "neuron", "attribution"], orient="row")
    prompts = neurons.group_by("fact_id", "paraphrase").agg(pl.col("attribution").max().alias("max_attribution"))
    return neurons, prompts


def refined_set(kns, fact):
    return {(r["layer"], r["neuron"]) for r in kns.filter((pl.col("level") == "refined") & (pl.col("fact_id") == fact)).iter_rows(named=True)}


ROWS = [
    # fact a, 4 paraphrases: neuron (1, 7) is top in all; (0, 3) in 3 of 4; (2, 5) in 1 of 4; (0, 9) always weak
    ("a", 0, 1, 7, 1.0), ("a", 0, 0, 3, 0.5), ("a", 0, 0, 9, 0.15),
    ("a", 1, 1, 7, 0.8), ("a", 1, 0, 3, 0.3), ("a", 1, 2, 5, 0.4), ("a", 1, 0, 9, 0.1),
    ("a", 2, 1, 7, 2.0), ("a", 2, 0, 3, 0.9),
    ("a", 3, 1, 7, 1.0), ("a", 3, 0, 3, 0.1), ("a", 3, 0, 9, -0.5),
    # fact b, 2 paraphrases
    ("b", 0, 3, 1, 1.0), ("b", 0, 3, 2, 0.9),
    ("b", 1, 3, 1, 1.0),
]


def test_coarse_is_relative_to_the_prompt_max_and_positive_only():
    neurons, prompts = frames(ROWS)
    kns, _ = select_kns(neurons, prompts, Selection(0.2, 0.5, False, (2, 5)), store_threshold=0.1)
    coarse = kns.filter((pl.col("level") == "coarse") & (pl.col("fact_id") == "a"))
    by_prompt = {p: {(r["layer"], r["neuron"]) for r in coarse.filter(pl.col("paraphrase") == p).iter_rows(named=True)} for p in range(4)}
    assert by_prompt[0] == {(1, 7), (0, 3)}  # 0.15 is not > 0.2 * 1.0
    assert by_prompt[1] == {(1, 7), (0, 3), (2, 5)}  # 0.3 > 0.16
    assert by_prompt[2] == {(1, 7), (0, 3)}
    assert by_prompt[3] == {(1, 7)}  # 0.1 is not > 0.2; negative never


@pytest.mark.parametrize("p, expected_a", [(0.5, {(1, 7), (0, 3)}), (0.8, {(1, 7)}), (0.25, {(1, 7), (0, 3), (2, 5)})])
def test_refined_kns_are_shared_by_a_fraction_p(p, expected_a):
    neurons, prompts = frames(ROWS)
    kns, info = select_kns(neurons, prompts, Selection(0.2, p, False, (2, 5)), store_threshold=0.1)
    assert refined_set(kns, "a") == expected_a
    assert info["refine_fraction"] == p and info["coarse_threshold"] == 0.2


def test_adaptive_mode_moves_p_into_the_band():
    neurons, prompts = frames(ROWS)
    # at p = 0.25 fact a has 3 and fact b 2 refined KNs (mean 2.5); the first p above 0.5 gives a 2 and b 1 (1.5)
    kns, info = select_kns(neurons, prompts, Selection(0.2, 0.25, True, (1.0, 1.5)), store_threshold=0.1)
    assert info["adaptive_band_reached"] is True and info["refine_mode"] == "adaptive"
    assert 1.0 <= info["mean_refined_kns_per_fact"] <= 1.5
    assert 0.5 < info["refine_fraction"] <= 0.75
    assert refined_set(kns, "a") == {(1, 7), (0, 3)} and refined_set(kns, "b") == {(3, 1)}
    _, unreachable = select_kns(neurons, prompts, Selection(0.2, 0.5, True, (50, 60)), store_threshold=0.1)
    assert unreachable["adaptive_band_reached"] is False


def test_threshold_below_storage_is_refused():
    neurons, prompts = frames(ROWS)
    with pytest.raises(KnrecallError, match="storage threshold"):
        select_kns(neurons, prompts, Selection(0.05, 0.5, False, (2, 5)), store_threshold=0.1)


def test_facts_are_shared_across_items_and_sharded_stably():
    hop2 = ["In which country is Zorin?", "Zorin lies in which country?"]
    items = [Item(str(i), "tfrkn", f"q{i}?", [f"Where was P{i} born?"], "Zorin", hop2, "Kestria") for i in range(5)]
    facts, links = facts_of(items)
    assert len(facts) == 6 and len(links) == 10
    assert len({fid for case, hop, fid in links if hop == 2}) == 1
    again, _ = facts_of(list(reversed(items)))
    assert set(again) == set(facts)
    for shards in (1, 3, 7):
        assigned = [shard_of(fid, shards) for fid in facts]
        assert all(0 <= s < shards for s in assigned)
        assert assigned == [shard_of(fid, shards) for fid in facts]


def test_the_neuron_definition_is_recorded():
    neurons, prompts = frames(ROWS)
    _, info = select_kns(neurons, prompts, Selection(0.2, 0.5, False, (2, 5)), store_threshold=0.1)
    assert info["neuron"] == "ffn_input"
    _, info = select_kns(neurons, prompts, Selection(0.2, 0.5, False, (2, 5)), 0.1, neuron="pre_activation")
    assert info["neuron"] == "pre_activation"
