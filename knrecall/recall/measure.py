"""Measure knowledge-neuron activations for the recall analysis (DESIGN.md §4, "KN activation score").

- Baselines b_i: for each fact with refined KNs, the mean activation of each KN at the answer-predicting position
  (the last prompt token) over the fact's paraphrase prompts.
- Item activations a_i: for each item, condition and hop, the activation of the hop's KNs at the reasoning step
  that should use the hop: the last prompt position without chain of thought; with it, the position that predicts
  the first token of o1 (hop 1) or o2 (hop 2) in the generated chain (`knrecall.recall.steps`), or the last prompt
  position, flagged, when the entity is absent. The generated ids come from the predictions, never re-tokenized.
- Null activations: the same fact's KNs read on up to `null_per_fact` other items that do not involve the fact, at
  those items' step position of the hop the fact plays most often — the null distribution of its Δ.
"""

from __future__ import annotations

import logging
from collections import Counter

import polars as pl
import torch

from knrecall.data.conditions import single_hop_prompt
from knrecall.data.facts import facts_of
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.models.adapters import adapter_for
from knrecall.recall.activations import activations_at
from knrecall.recall.scores import null_pairs
from knrecall.recall.steps import entity_token_variants, find_reasoning_steps, prompt_input_ids
from knrecall.targets import teacher_forced_contexts

log = logging.getLogger(__name__)
COT_CONDITIONS = ("zero_shot_cot", "few_shot_cot")


def refined_sets(kns: pl.DataFrame) -> dict[str, list[tuple[int, int]]]:
    refined = kns.filter(pl.col("level") == "refined").sort("fact_id", "layer", "neuron")
    sets: dict[str, list[tuple[int, int]]] = {}
    for row in refined.iter_rows(named=True):
        sets.setdefault(row["fact_id"], []).append((row["layer"], row["neuron"]))
    return sets


def _variants(tokenizer, entity: str, aliases) -> list[list[int]]:
    try:
        return entity_token_variants(tokenizer, entity, aliases)
    except KnrecallError:  # a word the tokenizer cannot spell: the step is simply never found
        return []


def measure(items: list[Item], predictions: pl.DataFrame, kns: pl.DataFrame, model, tokenizer,
            templates: dict[str, str], null_per_fact: int, seed: int, batch_size: int = 16):
    """(baselines, activations, steps) tables; see the README for their columns."""
    adapter = adapter_for(model)
    width = adapter.width(model)
    facts, links = facts_of(items)
    sets = refined_sets(kns)
    column = lambda layer, neuron: layer * width + neuron  # noqa: E731 - activations_at's layer-major order

    # baselines: mean over each fact's paraphrase prompts at the predicting position
    baseline_rows = []
    for fid, fact in facts.items():
        if fid not in sets:
            continue
        prompts = [teacher_forced_contexts(tokenizer, single_hop_prompt(q, templates), fact.answer)[0] for q in fact.questions]
        vectors = activations_at(model, adapter, prompts, [[len(p) - 1] for p in prompts], batch_size=batch_size)
        mean = torch.stack([v[0] for v in vectors]).mean(dim=0)
        baseline_rows += [{"fact_id": fid, "layer": l, "neuron": n, "baseline": float(mean[column(l, n)])} for l, n in sets[fid]]

    # reasoning-step positions and full activation vectors there, per item and condition
    by_case = {item.case_id: item for item in items}
    two_hop = predictions.filter(pl.col("kind") == "two_hop")
    step_rows, sequences, positions = [], [], []
    for row in two_hop.iter_rows(named=True):
        item = by_case[row["case_id"]]
        prompt_ids = prompt_input_ids(tokenizer, row["prompt"])
        steps = find_reasoning_steps(prompt_ids, row["generated_ids"], _variants(tokenizer, item.fact1_ans, item.fact1_aliases),
                                     _variants(tokenizer, item.fact2_ans, item.answer_aliases),
                                     cot=row["condition"] in COT_CONDITIONS)
        step_rows.append({"case_id": item.case_id, "condition": row["condition"],
                          "hop1_position": steps.hop1_position, "hop2_position": steps.hop2_position,
                          "hop1_found": steps.hop1_found, "hop2_found": steps.hop2_found})
        sequences.append(prompt_ids + list(row["generated_ids"]))
        positions.append([steps.hop1_position, steps.hop2_position])
    vectors = activations_at(model, adapter, sequences, positions, batch_size=batch_size)
    at = {(r["case_id"], r["condition"]): v for r, v in zip(step_rows, vectors)}

    by_item: dict[str, list] = {}
    for (case_id, condition), vector in at.items():
        by_item.setdefault(case_id, []).append((condition, vector))
    activation_rows = []
    for case_id, hop, fid in links:
        for condition, vector in by_item.get(case_id, []):
            for l, n in sets.get(fid, []):
                activation_rows.append({"kind": "item", "fact_id": fid, "case_id": case_id, "condition": condition,
                                        "hop": hop, "layer": l, "neuron": n, "activation": float(vector[hop - 1, column(l, n)])})

    # null: the fact's KNs on items that do not involve it, at the step of the hop it plays most often
    item_facts = pl.DataFrame(links, schema=["case_id", "hop", "fact_id"], orient="row")
    role = {fid: Counter(h for _, h, f in links if f == fid).most_common(1)[0][0] for fid in sets}
    pairs = null_pairs(item_facts.filter(pl.col("fact_id").is_in(list(sets))), rng_seed=seed, max_per_fact=null_per_fact)
    conditions = two_hop["condition"].unique(maintain_order=True).to_list()
    for fid, case_id in pairs.iter_rows():
        hop = role[fid]
        for condition in conditions:
            vector = at[(case_id, condition)]
            for l, n in sets[fid]:
                activation_rows.append({"kind": "null", "fact_id": fid, "case_id": case_id, "condition": condition,
                                        "hop": hop, "layer": l, "neuron": n, "activation": float(vector[hop - 1, column(l, n)])})
    log.info("measured %d baselines, %d activations", len(baseline_rows), len(activation_rows))
    schema_b = {"fact_id": pl.String, "layer": pl.Int16, "neuron": pl.Int32, "baseline": pl.Float32}
    schema_a = {"kind": pl.String, "fact_id": pl.String, "case_id": pl.String, "condition": pl.String, "hop": pl.Int8,
                "layer": pl.Int16, "neuron": pl.Int32, "activation": pl.Float32}
    schema_s = {"case_id": pl.String, "condition": pl.String, "hop1_position": pl.Int32, "hop2_position": pl.Int32,
                "hop1_found": pl.Boolean, "hop2_found": pl.Boolean}
    return (pl.DataFrame(baseline_rows, schema=schema_b), pl.DataFrame(activation_rows, schema=schema_a),
            pl.DataFrame(step_rows, schema=schema_s))
