"""Measure knowledge-neuron activations for the recall analysis (DESIGN.md §4, "KN activation score").

- Baselines b_i: for each fact with refined KNs, the mean activation of each KN at the answer-predicting position
  (the last prompt token) over the fact's paraphrase prompts.
- Item activations a_i: for each item, condition and hop, the activation of the hop's KNs at the reasoning step
  that should use the hop: the last prompt position without chain of thought; with it, the position that predicts
  the first token of o1 (hop 1) or o2 (hop 2) in the generated chain (`knrecall.recall.steps`), or the last prompt
  position, flagged, when the entity is absent. The generated ids come from the predictions, never re-tokenized.
- Null activations: the same fact's KNs read on up to `null_per_fact` other items that do not involve the fact, at
  those items' step position of the hop the fact plays most often — the null distribution of its Δ.
- Every activation row carries three POSITIONS of the two-hop sequence: `activation` at the hop's reasoning step
  (above), `activation_last_prompt` at the last prompt token, and `activation_subject_last` at the last token of
  the subject's last occurrence in the prompt (the last prompt token, flagged `subject_found` False in the steps
  table, when the subject is unknown or not found). Without chain of thought the step is the last prompt token.
- The per-position profile (`profile`): for a deterministic sample of `profile_items` items, every prompt
  position × layer group, Δ by projection (Σ a_i b_i / Σ b_i² over the group's KNs) of each hop's KNs, and, as its
  null, the same for the KNs of another fact of the same hop that the item does not involve, on the same prompt.

Items without a two-hop prediction under a condition (skipped by the answering phase) have no activations there
and serve as nobody's null there. A baseline prompt that cannot be teacher-forced (answer tokens, too long for the
context) is skipped (`knrecall.skips`) and the baseline is the mean over the fact's other prompts (a fact with KNs always
has one: attribution skipped the same prompts by the same rule). A two-hop sequence longer than the model's
context is skipped too. `wrap` is the model's prompt wrapper (its chat template), applied to the single-hop prompts
as everywhere else; the two-hop prompts come from the predictions, already wrapped.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from collections.abc import Callable

import numpy as np
import polars as pl
import torch

from knrecall.attribution.kns import refined_sets
from knrecall.attribution.run import usable_prompts
from knrecall.data.facts import facts_of
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.models.adapters import adapter_for
from knrecall.prompts import single_hop_prompt
from knrecall.recall.activations import activations_at, columns_for
from knrecall.recall.scores import null_pairs
from knrecall.recall.steps import (
    entity_token_variants,
    find_reasoning_steps,
    prompt_input_ids,
    subject_last_position,
)
from knrecall.skips import Skip, record

log = logging.getLogger(__name__)
COT_CONDITIONS = ("zero_shot_cot", "few_shot_cot")


def _variants(tokenizer, entity: str, aliases) -> list[list[int]]:
    try:
        return entity_token_variants(tokenizer, entity, aliases)
    except KnrecallError:  # a word the tokenizer cannot spell: the step is simply never found
        return []


def measure(items: list[Item], predictions: pl.DataFrame, kns: pl.DataFrame, model, tokenizer,
            templates: dict[str, str], null_per_fact: int, seed: int, batch_size: int = 16,
            profile_items: int = 0, neuron: str = "ffn_input", *, wrap: Callable[[str], str] | None = None,
            skipped: list[Skip] | None = None):
    """(baselines, activations, steps, profile) tables; see the README for their columns. `neuron` is the
    neuron definition the KNs were found under (`attribution.neuron`)."""
    wrap = wrap or (lambda prompt: prompt)
    limit = getattr(model.config, "max_position_embeddings", None)
    adapter = adapter_for(model, neuron)
    facts, links = facts_of(items)
    sets = refined_sets(kns)
    # only the neurons that are some fact's KN are read; column j of every vector is neuron pairs[j]
    union = sorted({neuron for kn_set in sets.values() for neuron in kn_set})
    selection: dict[int, list[int]] = {}
    for layer, neuron in union:
        selection.setdefault(layer, []).append(neuron)
    column = {pair: j for j, pair in enumerate(columns_for(model, selection, adapter).pairs)} if union else {}

    # baselines: mean over each fact's paraphrase prompts at the predicting position (every fact's prompts in one
    # batched pass)
    measured, prompts = [], []
    for fid, fact in facts.items():
        if fid not in sets:
            continue
        usable = usable_prompts(tokenizer, [wrap(single_hop_prompt(q, templates)) for q in fact.questions],
                                fact.answer, limit, fid, skipped, "measure")
        if usable:
            measured.append((fid, fact))
            prompts.append([pair[0] for _, _, pair in usable])
    flat = [p for group in prompts for p in group]
    vectors = iter(activations_at(model, adapter, flat, [[len(p) - 1] for p in flat], neurons=selection or None,
                                  batch_size=batch_size))
    baseline_rows = []
    for (fid, _), group in zip(measured, prompts):
        mean = torch.stack([next(vectors)[0] for _ in group]).mean(dim=0)
        baseline_rows += [{"fact_id": fid, "layer": l, "neuron": n, "baseline": float(mean[column[(l, n)]])}
                          for l, n in sets[fid]]

    # reasoning-step positions and the KN activations there, per item and condition
    by_case = {item.case_id: item for item in items}
    two_hop = predictions.filter(pl.col("kind") == "two_hop")
    variants = functools.lru_cache(maxsize=None)(lambda entity, aliases: _variants(tokenizer, entity, aliases))
    step_rows, sequences, positions = [], [], []
    for row in two_hop.iter_rows(named=True):
        item = by_case[row["case_id"]]
        prompt_ids = prompt_input_ids(tokenizer, row["prompt"])
        if limit and len(prompt_ids) + len(row["generated_ids"]) > limit:
            record(skipped, Skip("measure", "prompt_too_long", f"prompt and generation of {len(prompt_ids)} + "
                                 f"{len(row['generated_ids'])} tokens, more than the model's context of {limit}",
                                 item.case_id, condition=row["condition"]))
            continue
        steps = find_reasoning_steps(prompt_ids, row["generated_ids"],
                                     variants(item.fact1_ans, tuple(item.fact1_aliases)),
                                     variants(item.fact2_ans, tuple(item.answer_aliases)),
                                     cot=row["condition"] in COT_CONDITIONS)
        subject = subject_last_position(prompt_ids, variants(item.subject, ())) if item.subject else None
        last = len(prompt_ids) - 1
        step_rows.append({"case_id": item.case_id, "condition": row["condition"],
                          "hop1_position": steps.hop1_position, "hop2_position": steps.hop2_position,
                          "hop1_found": steps.hop1_found, "hop2_found": steps.hop2_found,
                          "last_prompt_position": last, "subject_position": last if subject is None else subject,
                          "subject_found": subject is not None})
        sequences.append(prompt_ids + list(row["generated_ids"]))
        positions.append([steps.hop1_position, steps.hop2_position, last, last if subject is None else subject])
    measured_at = activations_at(model, adapter, sequences, positions, neurons=selection or None,
                                 batch_size=batch_size)
    sequence_of = {(r["case_id"], r["condition"]): index for index, r in enumerate(step_rows)}

    # one block of rows per (kind, fact, item, condition): the fact's KNs read at the item's step of `hop`
    blocks: list[tuple[str, str, str, str, int]] = []
    conditions_of: dict[str, list[str]] = {}
    for r in step_rows:
        conditions_of.setdefault(r["case_id"], []).append(r["condition"])
    for case_id, hop, fid in links:
        if fid in sets:
            blocks += [("item", fid, case_id, condition, hop) for condition in conditions_of.get(case_id, [])]
    # null: the fact's KNs on items that do not involve it, at the step of the hop it plays most often
    item_facts = pl.DataFrame(links, schema=["case_id", "hop", "fact_id"], orient="row")
    role = {fid: Counter(h for _, h, f in links if f == fid).most_common(1)[0][0] for fid in sets}
    pairs = null_pairs(item_facts.filter(pl.col("fact_id").is_in(list(sets))), rng_seed=seed, max_per_fact=null_per_fact)
    conditions = two_hop["condition"].unique(maintain_order=True).to_list()
    for fid, case_id in pairs.iter_rows():  # only where that item was answered (and measured)
        blocks += [("null", fid, case_id, condition, role[fid]) for condition in conditions
                   if (case_id, condition) in sequence_of]
    activations = block_rows(blocks, sets, column, measured_at, sequence_of)
    log.info("measured %d baselines, %d activations", len(baseline_rows), activations.height)
    baselines = pl.DataFrame(baseline_rows, schema=BASELINES_SCHEMA)
    profile = _profile(items, links, sets, baselines, step_rows, sequences, model, adapter, selection, column,
                       profile_items, seed, batch_size)
    return baselines, activations, pl.DataFrame(step_rows, schema=STEPS_SCHEMA), profile


BASELINES_SCHEMA = {"fact_id": pl.String, "layer": pl.Int16, "neuron": pl.Int32, "baseline": pl.Float32}
STEPS_SCHEMA = {"case_id": pl.String, "condition": pl.String, "hop1_position": pl.Int32, "hop2_position": pl.Int32,
                "hop1_found": pl.Boolean, "hop2_found": pl.Boolean, "last_prompt_position": pl.Int32,
                "subject_position": pl.Int32, "subject_found": pl.Boolean}
ACTIVATIONS_SCHEMA = {"kind": pl.String, "fact_id": pl.String, "case_id": pl.String, "condition": pl.String,
                      "hop": pl.Int8, "layer": pl.Int16, "neuron": pl.Int32, "activation": pl.Float32,
                      "activation_last_prompt": pl.Float32, "activation_subject_last": pl.Float32}
PROFILE_SCHEMA = {"case_id": pl.String, "condition": pl.String, "hop": pl.Int8, "kind": pl.String,
                  "fact_id": pl.String, "position": pl.Int32, "offset": pl.Int32, "is_subject_last": pl.Boolean,
                  "layer_group": pl.Int8, "layers": pl.String, "delta": pl.Float32, "n_kns": pl.Int32}


def layer_groups(n_layers: int, n_groups: int = 4) -> list[list[int]]:
    """Contiguous layer groups for the profile: every layer alone up to `n_groups` layers, else `n_groups` groups of
    (nearly) equal size, lower layers first."""
    if n_layers <= n_groups:
        return [[layer] for layer in range(n_layers)]
    bounds = np.linspace(0, n_layers, n_groups + 1).round().astype(int)
    return [list(range(bounds[g], bounds[g + 1])) for g in range(n_groups)]


def _profile(items, links, sets, baselines, step_rows, sequences, model, adapter, selection, column,
             profile_items: int, seed: int, batch_size: int) -> pl.DataFrame:
    """The per-position profile table (module docstring): projection Δ per prompt position and layer group."""
    if profile_items <= 0 or not sets or not step_rows:
        return pl.DataFrame(schema=PROFILE_SCHEMA)
    facts_of_item = {}
    for case_id, hop, fid in links:
        facts_of_item.setdefault(case_id, {})[hop] = fid
    eligible = sorted(c for c, hops in facts_of_item.items() if all(hops.get(h) in sets for h in (1, 2)))
    chosen = set(random.Random(f"{seed}:profile").sample(eligible, min(profile_items, len(eligible))))
    by_hop = {hop: sorted({fid for _, h, fid in links if h == hop and fid in sets}) for hop in (1, 2)}
    base = {(r["fact_id"], r["layer"], r["neuron"]): r["baseline"] for r in baselines.iter_rows(named=True)}
    groups = layer_groups(len(adapter.layers(model)))
    rows = [index for index, r in enumerate(step_rows) if r["case_id"] in chosen]
    reads = activations_at(model, adapter, [sequences[i][: step_rows[i]["last_prompt_position"] + 1] for i in rows],
                           [list(range(step_rows[i]["last_prompt_position"] + 1)) for i in rows],
                           neurons=selection or None, batch_size=batch_size)
    out: dict[str, list] = {name: [] for name in PROFILE_SCHEMA}
    for index, values in zip(rows, reads):
        r = step_rows[index]
        case_id, last = r["case_id"], r["last_prompt_position"]
        values = values.numpy()  # [positions, selected neurons]
        for hop in (1, 2):
            own = facts_of_item[case_id][hop]
            others = [f for f in by_hop[hop] if f not in facts_of_item[case_id].values()]
            null = random.Random(f"{seed}:profile:{case_id}:{hop}").choice(others) if others else None
            for kind, fid in (("item", own), ("null", null)):
                if fid is None:
                    continue
                for g, layers in enumerate(groups):
                    kns = [(l, n) for l, n in sets[fid] if l in layers]
                    if not kns:
                        continue
                    b = np.array([base[(fid, l, n)] for l, n in kns], dtype=np.float64)
                    a = values[:, [column[kn] for kn in kns]].astype(np.float64)
                    bb = float(b @ b)
                    delta = a @ b / bb if bb > 0 else np.full(len(a), np.nan)
                    n = len(delta)
                    out["case_id"] += [case_id] * n
                    out["condition"] += [r["condition"]] * n
                    out["hop"] += [hop] * n
                    out["kind"] += [kind] * n
                    out["fact_id"] += [fid] * n
                    out["position"] += list(range(n))
                    out["offset"] += [p - last for p in range(n)]
                    out["is_subject_last"] += [r["subject_found"] and p == r["subject_position"] for p in range(n)]
                    out["layer_group"] += [g] * n
                    out["layers"] += [f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])] * n
                    out["delta"] += delta.tolist()
                    out["n_kns"] += [len(kns)] * n
    return pl.DataFrame(out, schema=PROFILE_SCHEMA)


def block_rows(blocks, sets, column, measured_at, sequence_of) -> pl.DataFrame:
    """The activations table: for each block (kind, fact, item, condition, hop), one row per KN of the fact, in
    the order of the fact's KN list, read from the item's measured vector at the hop's step (vectorised)."""
    if not blocks:
        return pl.DataFrame(schema=ACTIVATIONS_SCHEMA)
    fids = sorted(sets)
    index_of = {fid: i for i, fid in enumerate(fids)}
    counts = np.array([len(sets[fid]) for fid in fids])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    kn_layer = np.array([l for fid in fids for l, _ in sets[fid]], dtype=np.int16)
    kn_neuron = np.array([n for fid in fids for _, n in sets[fid]], dtype=np.int32)
    kn_column = np.array([column[pair] for fid in fids for pair in sets[fid]], dtype=np.int64)
    block_fact = np.array([index_of[b[1]] for b in blocks])
    block_sequence = np.array([sequence_of[(b[2], b[3])] for b in blocks])
    block_hop = np.array([b[4] for b in blocks])
    sizes = counts[block_fact]
    block = np.repeat(np.arange(len(blocks)), sizes)  # the block of every row
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    kn = offsets[block_fact[block]] + within
    values = torch.stack(measured_at).numpy()  # [sequences, (hop 1 step, hop 2 step, last, subject), neurons]
    sequence, columns = block_sequence[block], kn_column[kn]
    take = pl.Series(block, dtype=pl.UInt32)
    frame = pl.DataFrame({name: [b[i] for b in blocks] for i, name in enumerate(("kind", "fact_id", "case_id",
                                                                                  "condition", "hop"))})
    return frame[take].with_columns(
        layer=pl.Series(kn_layer[kn]), neuron=pl.Series(kn_neuron[kn]),
        activation=pl.Series(values[sequence, block_hop[block] - 1, columns]),
        activation_last_prompt=pl.Series(values[sequence, 2, columns]),
        activation_subject_last=pl.Series(values[sequence, 3, columns])).cast(ACTIVATIONS_SCHEMA)
