"""Run every intervention on one shard's items under every chosen prompt condition (DESIGN.md §4, "Interventions").

Per item and prompt condition (the prompts are the answering phase's own, `knrecall.answer.plan_prompts`):

- `base`: plain greedy generation (the same loop, nothing scaled);
- `enhance_{target}` / `suppress_{target}` for target hop1, hop2 and both (the union of the two hops' KNs): the
  item's refined knowledge neurons of that target multiplied by `enhance_factor` / `suppress_factor`;
- `random_enhance_{target}` / `random_suppress_{target}` with control seeds 0 .. random_seeds - 1: the same number
  of random neurons per layer, never one of the item's KNs (`knrecall.interventions.controls`).

All at one position policy (`knrecall.interventions.generate`), recorded in every row. An item whose KN set for a
target is empty has no rows for that target (nothing to scale); the analysis counts such items. A random control
that cannot be drawn (a layer with fewer neurons outside the item's KNs than the KN set has there: only with very
narrow FFNs) has no rows either; it is logged, and the analysis counts the items without a control.

Per row: the generation, its answer span and correctness (the answering phase's rules), and `gold_prob`, the
probability of the gold answer's first token at the step that produced the answer span's first token (the first
step without chain of thought; the step after "So the answer is" with it); for an empty span, at the last step.
With `max_items`, a deterministic sample of the items (by seed) is intervened on. Items are assigned to shards
by a hash of their case id, so the union of shards is the same for any shard count.

Skip, count, continue (`knrecall.skips`): the prompts are planned as the answering phase plans them, so an item
without a conflict candidate or few-shot exemplars is skipped under that condition the same way; an item whose
gold answer cannot be tokenized, or whose prompt does not fit the model's context with the tokens to generate, is
skipped too. Each skip is one log line, recorded in the shard's metadata and counted in the summary. `wrap` is the
model's prompt wrapper (its chat template, `knrecall.models.chat`), as in the answering phase.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
from tqdm import tqdm

from knrecall.answer.generate import context_limit, stop_token_ids
from knrecall.answer.plan import COT_CONDITIONS, PlannedPrompt, plan_prompts
from knrecall.data.correctness import extract_span, is_correct
from knrecall.data.facts import facts_of
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.interventions.controls import Neuron, as_layer_map, random_control
from knrecall.interventions.generate import Generation, greedy_generate
from knrecall.models.adapters import adapter_for
from knrecall.recall.steps import prompt_input_ids
from knrecall.skips import Skip, record
from knrecall.targets import answer_token_ids

log = logging.getLogger(__name__)
TARGETS = ("hop1", "hop2", "both")
COT_ANSWER_CONTEXT = "So the answer is"

INTERVENTIONS_SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("condition", pa.string(), nullable=False),
        pa.field("intervention", pa.string(), nullable=False),  # base | enhance_hop1 | random_suppress_both | ...
        pa.field("kind", pa.string(), nullable=False),  # base | kn | random
        pa.field("target", pa.string()),  # hop1 | hop2 | both; null for base
        pa.field("factor", pa.float32(), nullable=False),
        pa.field("control_seed", pa.int32()),  # random controls only
        pa.field("policy", pa.string(), nullable=False),
        pa.field("n_neurons", pa.int32(), nullable=False),
        pa.field("generation", pa.string(), nullable=False),
        pa.field("generated_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("answer_span", pa.string(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("gold_prob", pa.float32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Intervention:
    name: str
    kind: str  # base | kn | random
    target: str | None
    factor: float
    control_seed: int | None = None


@dataclass(frozen=True)
class Settings:
    conditions: tuple[str, ...]
    enhance_factor: float
    suppress_factor: float
    random_seeds: int
    policy: str
    max_new_tokens: int
    cot_max_new_tokens: int
    few_shot_k: int
    seed: int
    max_items: int | None = None
    neuron: str = "ffn_input"  # attribution.neuron: the definition the KNs were found under


def interventions(settings: Settings) -> list[Intervention]:
    """base, then per target enhance and suppress on the KNs, then their random controls (seed-major)."""
    plan = [Intervention("base", "base", None, 1.0)]
    modes = (("enhance", settings.enhance_factor), ("suppress", settings.suppress_factor))
    for target in TARGETS:
        for mode, factor in modes:
            plan.append(Intervention(f"{mode}_{target}", "kn", target, factor))
    for control_seed in range(settings.random_seeds):
        for target in TARGETS:
            for mode, factor in modes:
                plan.append(Intervention(f"random_{mode}_{target}", "random", target, factor, control_seed))
    return plan


def shard_of_case(case_id: str, shards: int) -> int:
    return int(hashlib.sha1(case_id.encode()).hexdigest()[:12], 16) % shards


def sampled_cases(items: list[Item], max_items: int | None, seed: int) -> set[str]:
    """The case ids intervened on: every item, or the `max_items` with the smallest sha1(seed:case_id); never a
    pathway-revealing world item (`shortcut_conflicting`: its accuracy has no single gold meaning)."""
    cases = [item.case_id for item in items if not item.shortcut_conflicting]
    if max_items is None or max_items >= len(cases):
        return set(cases)
    return set(sorted(cases, key=lambda c: hashlib.sha1(f"{seed}:{c}".encode()).hexdigest())[:max_items])


def item_kn_sets(items: list[Item], refined: dict[str, list[Neuron]]) -> dict[str, dict[str, list[Neuron]]]:
    """case_id -> {hop1, hop2, both} -> sorted refined KNs (hop1/hop2 of the item's facts, both = their union)."""
    _, links = facts_of(items)
    sets: dict[str, dict[str, list[Neuron]]] = {}
    for case_id, hop, fid in links:
        sets.setdefault(case_id, {})[f"hop{hop}"] = sorted(refined.get(fid, []))
    for by_target in sets.values():
        by_target["both"] = sorted(set(by_target.get("hop1", [])) | set(by_target.get("hop2", [])))
    return sets


def neurons_for(intervention: Intervention, case_id: str, kn_sets: dict[str, list[Neuron]], width: int,
                model_name: str) -> list[Neuron]:
    """The neurons to scale; [] when there is nothing to scale (no KNs for the target, or, for a random control,
    too few neurons outside the item's KNs in some layer: only possible with very narrow FFNs)."""
    if intervention.kind == "base":
        return []
    kns = kn_sets.get(intervention.target, [])
    if intervention.kind == "kn" or not kns:
        return kns
    key = f"{model_name}:{case_id}:{intervention.target}:{intervention.control_seed}"
    try:
        return random_control(kns, kn_sets["both"], width, key)
    except KnrecallError as exc:
        log.warning("no random control for item %s, %s: %s", case_id, intervention.name, exc)
        return []


def answer_step(tokenizer, generated_ids: list[int], generation: str, span: str, cot: bool = True) -> int:
    """The index of the generated token that starts the answer span (the last token for an empty span): the span's
    last occurrence for chain of thought (it follows the last "So the answer is"), its first otherwise."""
    if not generated_ids:
        return 0
    start = (generation.rfind(span) if cot else generation.find(span)) if span else -1
    if start < 0:
        return len(generated_ids) - 1
    for k in range(1, len(generated_ids) + 1):
        if len(tokenizer.decode(generated_ids[:k], skip_special_tokens=True)) > start:
            return k - 1
    return len(generated_ids) - 1


def run_shard(items: list[Item], refined: dict[str, list[Neuron]], model, tokenizer, templates: dict[str, str],
              settings: Settings, shard: int, shards: int, batch_size: int, model_name: str, *,
              wrap: Callable[[str], str] | None = None, skipped: list[Skip] | None = None) -> pa.Table:
    """Every (item of the shard, condition, intervention) row; see the module docstring. Skipped items go to
    `skipped`."""
    if shards < 1 or not 0 <= shard < shards:
        raise KnrecallError(f"interventions: shard {shard} is not in 0..{shards - 1}")
    adapter = adapter_for(model, settings.neuron)
    width = adapter.width(model)
    kn_sets = item_kn_sets(items, refined)
    plan_all = interventions(settings)
    chosen_cases = {c for c in sampled_cases(items, settings.max_items, settings.seed) if shard_of_case(c, shards) == shard}
    context = context_limit(model)
    rows: list[dict] = []
    drawn: dict[tuple[str, str, int | None], list[Neuron]] = {}  # the same neurons under every condition
    steps: dict[tuple, int] = {}  # answer steps of identical generations (many interventions change nothing)
    for condition in settings.conditions:
        # this shard's items, planned against every item (few-shot exemplars and conflict entities come from all)
        planned = plan_prompts(items, templates, condition, settings.seed, settings.few_shot_k, single_hop=False,
                               wrap=wrap, skipped=skipped, phase="intervene", cases=chosen_cases)
        planned.sort(key=lambda p: len(p.query.prompt))
        cot = condition in COT_CONDITIONS
        limit = settings.cot_max_new_tokens if cot else settings.max_new_tokens
        stops = stop_token_ids(tokenizer, cot)
        prompt_ids, gold = {}, {}
        kept = []
        for p in planned:
            case_id = p.item.case_id
            try:
                gold[case_id] = answer_token_ids(tokenizer, COT_ANSWER_CONTEXT if cot else p.query.prompt,
                                                 p.query.gold)[0]
            except KnrecallError as exc:
                record(skipped, Skip("intervene", "answer_tokens", str(exc), case_id, condition=condition))
                continue
            prompt_ids[case_id] = prompt_input_ids(tokenizer, p.query.prompt)
            if context and len(prompt_ids[case_id]) + limit > context:
                record(skipped, Skip("intervene", "prompt_too_long", f"prompt {p.query.prompt[:80]!r} needs "
                                     f"{len(prompt_ids[case_id]) + limit} positions with {limit} new tokens, more "
                                     f"than the model's context of {context}", case_id, condition=condition))
                continue
            kept.append(p)
        planned = kept
        log.info("shard %d/%d, %s: %d items x %d interventions", shard, shards, condition, len(planned), len(plan_all))
        # every (intervention, item) run of the condition, batched across interventions (row r scaled by its own
        # factor), prompts of similar length together; rows are written in (intervention, item) order
        runs: list[tuple[Intervention, PlannedPrompt, list[Neuron]]] = []
        for intervention in plan_all:
            for p in planned:
                key = (p.item.case_id, intervention.name, intervention.control_seed)
                if key not in drawn:
                    drawn[key] = neurons_for(intervention, p.item.case_id, kn_sets.get(p.item.case_id, {}), width,
                                             model_name)
                neurons = drawn[key]
                if intervention.kind == "base" or neurons:
                    runs.append((intervention, p, neurons))
        order = sorted(range(len(runs)), key=lambda r: len(prompt_ids[runs[r][1].item.case_id]))
        results: dict[int, Generation] = {}
        for start in tqdm(range(0, len(order), batch_size), desc=f"intervene {condition}", unit="batch",
                          file=sys.stderr, mininterval=10):
            batch = [runs[r] for r in order[start:start + batch_size]]
            generated = greedy_generate(
                model, [prompt_ids[p.item.case_id] for _, p, _ in batch], limit, stops,
                neurons=[as_layer_map(n) for _, _, n in batch], factor=[i.factor for i, _, _ in batch],
                policy=settings.policy, gold_ids=[gold[p.item.case_id] for _, p, _ in batch], adapter=adapter,
                pad_id=tokenizer.pad_token_id)
            results.update(zip(order[start:start + batch_size], generated))
        for index, (intervention, p, neurons) in enumerate(runs):
            result = results[index]
            generation = tokenizer.decode(result.generated_ids, skip_special_tokens=True)
            span = extract_span(generation, cot)
            key = (tuple(result.generated_ids), cot)
            if key not in steps:
                steps[key] = answer_step(tokenizer, result.generated_ids, generation, span, cot)
            step = steps[key]
            rows.append({
                "case_id": p.item.case_id, "condition": condition, "intervention": intervention.name,
                "kind": intervention.kind, "target": intervention.target, "factor": intervention.factor,
                "control_seed": intervention.control_seed, "policy": settings.policy,
                "n_neurons": len(neurons), "generation": generation, "generated_ids": result.generated_ids,
                "answer_span": span, "correct": is_correct(span, p.query.gold, p.query.aliases),
                "gold_prob": result.gold_probs[step] if result.gold_probs else 0.0,
            })
    return pa.Table.from_pylist(rows, schema=INTERVENTIONS_SCHEMA)
