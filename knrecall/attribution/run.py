"""Attribute every single-hop paraphrase prompt of one shard's facts, and summarise the results.

A shard holds the facts whose id hashes to it (`knrecall.data.facts.shard_of`), so the union of shards is the
same set of prompts whatever the shard count. Each prompt's map is stored thresholded: neurons with attribution
≥ `store_threshold` × the prompt's maximum (or every neuron with `full_maps`), plus one row per layer with the
completeness check.

A prompt whose answer cannot be tokenized after it, or that does not fit the model's context with its answer, is
skipped (`knrecall.skips`: one log line, recorded in the shard's metadata) and the shard goes on; a fact whose
every prompt is skipped has no attribution rows, hence no KNs (reported as "no KNs" downstream). Refined KNs are
then shared by a fraction of the fact's prompts that were attributed. `wrap` is the model's prompt wrapper (its
chat template, `knrecall.models.chat`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import torch
from tqdm import tqdm

from knrecall.attribution.batched import attribute_prompts
from knrecall.attribution.engine import LayerwiseIG
from knrecall.data.facts import facts_of, shard_of
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.models.adapters import adapter_for
from knrecall.prompts import single_hop_prompt
from knrecall.skips import Skip, record
from knrecall.targets import teacher_forced_contexts

log = logging.getLogger(__name__)

NEURONS_SCHEMA = pa.schema(
    [
        pa.field("fact_id", pa.string(), nullable=False),
        pa.field("paraphrase", pa.int16(), nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("attribution", pa.float32(), nullable=False),
        pa.field("activation", pa.float32(), nullable=False),
    ]
)

LAYERS_SCHEMA = pa.schema(
    [
        pa.field("fact_id", pa.string(), nullable=False),
        pa.field("paraphrase", pa.int16(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("max_attribution", pa.float32(), nullable=False),
        pa.field("attribution_sum", pa.float32(), nullable=False),
        pa.field("target_delta", pa.float32(), nullable=False),
        pa.field("completeness_error", pa.float32(), nullable=False),
        pa.field("base_target", pa.float32(), nullable=False),
        pa.field("n_answer_tokens", pa.int16(), nullable=False),
        pa.field("seconds", pa.float32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class AttributionSettings:
    steps: int
    rule: str
    target: str
    store_threshold: float
    full_maps: bool
    neuron: str = "ffn_input"  # attribution.neuron: ffn_input | pre_activation (knrecall.models.adapters)


def neuron_rows(ig: LayerwiseIG, store_threshold: float, full_maps: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer, neuron) index tensors of the neurons to store for one prompt."""
    attr = ig.attributions
    if full_maps:
        return torch.nonzero(torch.ones_like(attr, dtype=torch.bool), as_tuple=True)
    top = float(attr.max())
    if top <= 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.nonzero(attr >= store_threshold * top, as_tuple=True)


def usable_prompts(tokenizer, prompts: list[str], answer: str, limit: int | None, fact_id: str,
                   skipped: list[Skip] | None, phase: str) -> list[tuple[int, str, tuple[list[int], list[int]]]]:
    """(paraphrase, prompt, (prompt ids, answer ids)) of the prompts that can be teacher-forced with `answer`
    within `limit` positions; the others are recorded as skips of `phase`."""
    usable = []
    for paraphrase, prompt in enumerate(prompts):
        where = dict(kind="fact", paraphrase=paraphrase, fact_id=fact_id)
        try:
            pair = teacher_forced_contexts(tokenizer, prompt, answer)
        except KnrecallError as exc:
            record(skipped, Skip(phase, "answer_tokens", str(exc), **where))
            continue
        needed = len(pair[0]) + len(pair[1])
        if limit and needed > limit:
            record(skipped, Skip(phase, "prompt_too_long", f"prompt {prompt[:80]!r} with answer {answer!r} needs "
                                 f"{needed} positions, more than the model's context of {limit}", **where))
            continue
        usable.append((paraphrase, prompt, pair))
    return usable


def attribute_shard(items: list[Item], model, tokenizer, templates: dict[str, str], settings: AttributionSettings,
                    shard: int, shards: int, max_rows: int, *, wrap: Callable[[str], str] | None = None,
                    skipped: list[Skip] | None = None) -> tuple[pa.Table, pa.Table]:
    wrap = wrap or (lambda prompt: prompt)
    limit = getattr(model.config, "max_position_embeddings", None)
    facts, _ = facts_of(items)
    mine = [fact for fact in facts.values() if shard_of(fact.fact_id, shards) == shard]
    adapter = adapter_for(model, settings.neuron)
    n_prompts = sum(len(f.questions) for f in mine)
    log.info("shard %d/%d: %d facts, %d prompts", shard, shards, len(mine), n_prompts)
    neurons: dict[str, list] = {name: [] for name in NEURONS_SCHEMA.names}
    layers: dict[str, list] = {name: [] for name in LAYERS_SCHEMA.names}
    with tqdm(total=n_prompts, desc=f"attribute shard {shard}", unit="prompt", file=sys.stderr, mininterval=5) as bar:
        for fact in mine:  # a fact's paraphrases share forwards: the grouping depends on the fact alone
            prompts = [wrap(single_hop_prompt(question, templates)) for question in fact.questions]
            usable = usable_prompts(tokenizer, prompts, fact.answer, limit, fact.fact_id, skipped, "attribute")
            bar.update(len(prompts) - len(usable))
            if not usable:
                continue
            start = time.perf_counter()
            maps = attribute_prompts(model, adapter, [pair for _, _, pair in usable], steps=settings.steps,
                                     rule=settings.rule, target=settings.target, max_rows=max_rows)
            seconds = (time.perf_counter() - start) / len(usable)
            for (paraphrase, prompt, _), ig in zip(usable, maps):
                layer_idx, neuron_idx = neuron_rows(ig, settings.store_threshold, settings.full_maps)
                count = len(layer_idx)
                neurons["fact_id"] += [fact.fact_id] * count
                neurons["paraphrase"] += [paraphrase] * count
                neurons["layer"] += layer_idx.tolist()
                neurons["neuron"] += neuron_idx.tolist()
                neurons["attribution"] += ig.attributions[layer_idx, neuron_idx].tolist()
                neurons["activation"] += ig.activations[layer_idx, neuron_idx].tolist()
                errors = ig.completeness_error
                for layer in range(ig.attributions.shape[0]):
                    layers["fact_id"].append(fact.fact_id)
                    layers["paraphrase"].append(paraphrase)
                    layers["prompt"].append(prompt)
                    layers["answer"].append(fact.answer)
                    layers["layer"].append(layer)
                    layers["max_attribution"].append(float(ig.attributions[layer].max()))
                    layers["attribution_sum"].append(float(ig.attribution_sums[layer]))
                    layers["target_delta"].append(float(ig.target_deltas[layer]))
                    layers["completeness_error"].append(float(errors[layer]))
                    layers["base_target"].append(ig.base_target)
                    layers["n_answer_tokens"].append(ig.n_answer_tokens)
                    layers["seconds"].append(seconds)
                bar.update(1)
    return pa.table(neurons, schema=NEURONS_SCHEMA), pa.table(layers, schema=LAYERS_SCHEMA)
