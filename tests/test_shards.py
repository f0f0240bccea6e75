"""Attribution shards: 1 shard and 3 shards give identical attributions and refined KN sets."""

import polars as pl
import torch

from knrecall.attribution.kns import Selection, select_kns
from knrecall.attribution.run import AttributionSettings, attribute_shard
from knrecall.data.items import Item
from knrecall.world.tokenizer import build_tokenizer

from tiny_models import tiny_model

TEMPLATES = {"direct": "Q: {question} A:"}


def world_like_items():
    people = ["Ada Vell", "Bo Rask", "Cy Dunn", "Di Moor", "Ed Fay"]
    cities = ["Zorin", "Telk", "Zorin", "Murr", "Telk"]
    country = {"Zorin": "Kestria", "Telk": "Vamor", "Murr": "Kestria"}
    return [
        Item(f"c{i}", "tfrkn", f"In which country was {p} born?",
             [f"Where was {p} born?", f"In which city was {p} born?", f"{p} was born in which city?"], c,
             [f"In which country is {c}?", f"Which country is {c} located in?"], country[c])
        for i, (p, c) in enumerate(zip(people, cities))
    ]


def run_shards(items, shards):
    texts = [f"Q: {q} A: {a} ." for it in items for q, a in [(it.two_hop, it.fact2_ans)]
             + [(q, it.fact1_ans) for q in it.fact1_query] + [(q, it.fact2_ans) for q in it.fact2_query]]
    tokenizer = build_tokenizer(texts)
    torch.manual_seed(0)
    model = tiny_model("llama")
    model.resize_token_embeddings(len(tokenizer))
    settings = AttributionSettings(steps=6, rule="gauss_legendre", target="prob", store_threshold=0.1, full_maps=False)
    parts = [attribute_shard(items, model, tokenizer, TEMPLATES, settings, shard, shards, max_rows=64)
             for shard in range(shards)]
    neurons = pl.concat([pl.from_arrow(n) for n, _ in parts])
    layers = pl.concat([pl.from_arrow(l) for _, l in parts])
    return neurons, layers


def test_one_and_three_shards_agree():
    items = world_like_items()
    results = {}
    for shards in (1, 3):
        neurons, layers = run_shards(items, shards)
        prompts = layers.group_by("fact_id", "paraphrase").agg(pl.col("max_attribution").max())
        kns, _ = select_kns(neurons, prompts, Selection(0.2, 0.5, False, (2, 5)), store_threshold=0.1)
        results[shards] = (neurons.sort("fact_id", "paraphrase", "layer", "neuron"), kns)
    (n1, k1), (n3, k3) = results[1], results[3]
    assert n1.height > 0 and n1.equals(n3)
    refined1 = k1.filter(pl.col("level") == "refined").select("fact_id", "layer", "neuron").sort(pl.all())
    refined3 = k3.filter(pl.col("level") == "refined").select("fact_id", "layer", "neuron").sort(pl.all())
    assert refined1.height > 0 and refined1.equals(refined3)
    assert k1.select("fact_id").n_unique() == 5 + 3  # five people's birthplaces + three cities' countries
