"""Greedy answers with correctness: every single-hop paraphrase, and every two-hop question under each condition.

Prompts come from `knrecall.data.conditions` (direct, zero- and few-shot chain of thought, conflicting context).
Single-hop paraphrases are always asked under `direct`.

Answer span (what correctness is judged on):
- `direct` and the conflict conditions: the generation up to its first full stop or line break;
- chain of thought: the text after the last "So the answer is" up to the next full stop or line break; without
  that marker, the last sentence of the generation.
Correct (DESIGN.md §4): the gold answer or an alias appears in the span, case-insensitively and as whole words.
For every prompt we also record whether the first generated token is the gold answer's first token and that
token's probability (fp32 softmax at the predicting position). For chain of thought, `chain_names_bridge` says
whether the chain before the final answer names the bridge entity (o1 or an alias); for conflict, `follows` says
whether the answer follows the context (`context`), the model's memory (`memory`) or `neither`, and
`context_source` where the conflicting entity came from (`rewrite`: the record's own counterfactual;
`same_relation`: another object of the relation in the dataset).

Skip, count, continue (`knrecall.skips`): an item without a conflict candidate or without enough few-shot
exemplars is left out of that condition only; a prompt whose answer cannot be tokenized after it, or that does not
fit the model's context with the tokens to generate, is left out (that prompt only). Each skip is one log line and
one row of the skipped table; every other prompt is answered. Only when no two-hop question is left at all does
the phase stop, with one message naming the reasons.

Instruction-tuned models (`models.<name>.chat_template`): `wrap` turns every question prompt into the model's
chat prompt (`knrecall.models.chat`); the wrapped prompt is what is generated from and stored.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import torch
from tqdm import tqdm

from knrecall.data.conditions import (
    candidates_by_relation,
    choose_exemplars,
    conflict_choice,
    conflict_context,
    no_candidate_reason,
    render,
    single_hop_prompt,
)
from knrecall.data.correctness import ANSWER_MARKER, extract_span, is_correct, normalize  # noqa: F401
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.skips import Skip, record
from knrecall.targets import answer_token_ids, target_tokens

COT_CONDITIONS = ("zero_shot_cot", "few_shot_cot")
CONFLICT_HOPS = {"conflict_hop1": 1, "conflict_hop2": 2}

PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # hop1 | hop2 | two_hop
        pa.field("paraphrase", pa.int16(), nullable=False),  # index into fact{1,2}_query; 0 for two_hop
        pa.field("condition", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("generation", pa.string(), nullable=False),
        pa.field("generated_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("answer_span", pa.string(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("first_token_correct", pa.bool_(), nullable=False),
        pa.field("gold_first_token_prob", pa.float32(), nullable=False),
        pa.field("chain_names_bridge", pa.bool_()),  # chain of thought only
        pa.field("context_answer", pa.string()),  # conflict only: the answer the context implies
        pa.field("follows", pa.string()),  # conflict only: context | memory | neither
        pa.field("context_source", pa.string()),  # conflict only: rewrite | same_relation
    ]
)


@dataclass(frozen=True)
class Query:
    prompt: str
    gold: str
    aliases: tuple[str, ...]
    cot: bool = False


@dataclass(frozen=True)
class PlannedPrompt:
    item: Item
    kind: str
    paraphrase: int
    query: Query
    context_answer: str | None = None
    context_source: str | None = None


def chain_names_bridge(generation: str, bridge: str, aliases: list[str]) -> bool:
    markers = list(ANSWER_MARKER.finditer(generation))
    chain = generation[: markers[-1].start()] if markers else generation
    return is_correct(chain, bridge, tuple(aliases))


def follows(span: str, context_answer: str | None, memory: str, aliases: tuple[str, ...]) -> str:
    if context_answer is not None and is_correct(span, context_answer, ()):
        return "context"
    if is_correct(span, memory, aliases):
        return "memory"
    return "neither"


def hop2_of_bridge(items: list[Item]) -> dict[tuple[str, str | None], str]:
    """(bridge entity, relation 2) -> o2, from every item: what a fake bridge implies for the answer."""
    return {(item.fact1_ans, item.relation2): item.fact2_ans for item in items}


def plan_prompts(items: list[Item], templates: dict[str, str], condition: str, seed: int, few_shot_k: int,
                 single_hop: bool = True, *, wrap: Callable[[str], str] | None = None,
                 skipped: list[Skip] | None = None, phase: str = "answer",
                 cases: set[str] | None = None, quiet: bool = False) -> list[PlannedPrompt]:
    """The two-hop question of every item under `condition`, and (if `single_hop`) its single-hop paraphrases.

    `wrap` (a model's chat prompt, `knrecall.models.chat`) is applied to every prompt. An item without a conflict
    candidate or without enough few-shot exemplars has no two-hop prompt under that condition: it is recorded in
    `skipped` (one log line) and the plan goes on. With `cases`, only those items are planned (every item still
    serves as an exemplar and a conflict candidate). `quiet`: record skips without logging them (the caller does).
    """
    wrap = wrap or (lambda prompt: prompt)
    plan: list[PlannedPrompt] = []
    candidates = candidates_by_relation(items) if condition in CONFLICT_HOPS else {}
    pool = sorted(items, key=lambda x: (x.case_id, x.two_hop))  # choose_exemplars' own order: its sort is then O(n)
    implied = hop2_of_bridge(items) if condition == "conflict_hop1" else {}
    for item in items:
        if cases is not None and item.case_id not in cases:
            continue
        for kind, questions, gold, aliases in () if not single_hop else (
            ("hop1", item.fact1_query, item.fact1_ans, item.fact1_aliases),
            ("hop2", item.fact2_query, item.fact2_ans, item.answer_aliases),
        ):
            for index, question in enumerate(questions):
                prompt = wrap(single_hop_prompt(question, templates))
                plan.append(PlannedPrompt(item, kind, index, Query(prompt, gold, tuple(aliases))))
        context_answer = source = None
        if condition == "few_shot_cot":
            try:
                exemplars = choose_exemplars(item, pool, few_shot_k, seed)
            except KnrecallError as exc:
                record(skipped, Skip(phase, "no_exemplars", str(exc), item.case_id, condition=condition), quiet)
                continue
            prompt = render(condition, item, templates, exemplars=exemplars)
        elif condition in CONFLICT_HOPS:
            hop = CONFLICT_HOPS[condition]
            choice = conflict_choice(item, hop, candidates, seed)
            if choice is None:
                record(skipped, Skip(phase, "no_conflict_candidate", no_candidate_reason(item, hop), item.case_id,
                                     condition=condition), quiet)
                continue
            fake, context_answer, source = choice
            prompt = render(condition, item, templates, context=conflict_context(item, hop, fake))
            if context_answer is None:
                context_answer = implied.get((fake, item.relation2))
        else:
            prompt = render(condition, item, templates)
        query = Query(wrap(prompt), item.fact2_ans, tuple(item.answer_aliases), cot=condition in COT_CONDITIONS)
        plan.append(PlannedPrompt(item, "two_hop", 0, query, context_answer, source))
    return plan


def stop_token_ids(tokenizer, cot: bool) -> list[int]:
    """EOS, a line break, and (not for chains of thought, whose steps end in full stops) a full stop."""
    ids = [tokenizer.eos_token_id]
    for stop in ("\n",) if cot else (".", "\n"):
        encoded = tokenizer(stop, add_special_tokens=False).input_ids
        if len(encoded) == 1:
            ids.append(encoded[0])
    return ids


def check_context(model, needed: int, batch: list[Query]) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and needed > limit:
        longest = max(batch, key=lambda q: len(q.prompt))
        raise KnrecallError(
            f"prompt '{longest.prompt[:80]}' needs {needed} positions with max_new_tokens, "
            f"more than the model's context of {limit}"
        )


def trim_generated(ids: list[int], stops: list[int], pad: int | None) -> list[int]:
    """The generated ids up to and including the first stop token (generate pads finished rows)."""
    out = []
    for token in ids:
        out.append(token)
        if token in stops:
            break
    while out and pad is not None and out[-1] == pad and pad not in stops:
        out.pop()
    return out


@torch.no_grad()
def greedy_answers(model, tokenizer, queries: list[Query], max_new_tokens: int, batch_size: int, device: str) -> dict[Query, dict]:
    """Greedy generation for each distinct query; returns per query its generation, span and correctness."""
    distinct = sorted(set(queries), key=lambda q: (q.cot, len(q.prompt), q.prompt, q.gold))
    results: dict[Query, dict] = {}
    batches = [
        [q for q in distinct if q.cot == cot][start : start + batch_size]
        for cot in (False, True)
        for start in range(0, sum(q.cot == cot for q in distinct), batch_size)
    ]
    if distinct:  # every prompt must fit before any work starts (one message, no half-done run)
        lengths = [len(ids) for ids in tokenizer([q.prompt for q in distinct]).input_ids]
        longest = max(range(len(distinct)), key=lambda i: lengths[i])
        check_context(model, lengths[longest] + max_new_tokens, [distinct[longest]])
    for batch in tqdm(batches, desc="answer", unit="batch", file=sys.stderr, mininterval=5):
        stops = stop_token_ids(tokenizer, batch[0].cot)
        enc = tokenizer([q.prompt for q in batch], return_tensors="pt", padding=True).to(device)
        check_context(model, enc.input_ids.shape[1] + max_new_tokens, batch)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        first_probs = torch.softmax(out.logits[0].float(), dim=-1)
        new_tokens = out.sequences[:, enc.input_ids.shape[1] :]
        for row, query in enumerate(batch):
            gold_first = answer_token_ids(tokenizer, query.prompt, query.gold)[0]
            generated = trim_generated(new_tokens[row].tolist(), stops, tokenizer.pad_token_id)
            generation = tokenizer.decode(generated, skip_special_tokens=True)
            span = extract_span(generation, query.cot)
            results[query] = {
                "generation": generation,
                "generated_ids": generated,
                "answer_span": span,
                "correct": is_correct(span, query.gold, query.aliases),
                "first_token_correct": int(new_tokens[row, 0]) == gold_first,
                "gold_first_token_prob": float(first_probs[row, gold_first]),
            }
    return results


def context_limit(model) -> int | None:
    """The model's context (positions), or None when its config does not say."""
    return getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)


def answerable(plan: list[PlannedPrompt], tokenizer, limit: int | None, max_new_tokens: int, condition: str,
               skipped: list[Skip] | None, phase: str = "answer", quiet: bool = False) -> list[PlannedPrompt]:
    """The planned prompts whose answer tokenizes after the prompt and that fit the model's context with
    `max_new_tokens` generated tokens; the others are recorded in `skipped` (one log line each)."""
    distinct = sorted({p.query.prompt for p in plan})
    lengths = dict(zip(distinct, (len(ids) for ids in tokenizer(distinct).input_ids))) if distinct else {}
    targets: dict[tuple[str, str], str | None] = {}
    kept = []
    for p in plan:
        two_hop = p.kind == "two_hop"
        where = dict(case_id=p.item.case_id, kind=p.kind, paraphrase=None if two_hop else p.paraphrase,
                     condition=condition if two_hop else None)
        key = (p.query.prompt, p.query.gold)
        if key not in targets:
            try:
                target_tokens(tokenizer, *key)
                targets[key] = None
            except KnrecallError as exc:
                targets[key] = str(exc)
        if targets[key] is not None:
            record(skipped, Skip(phase, "answer_tokens", targets[key], **where), quiet)
            continue
        needed = lengths[p.query.prompt] + max_new_tokens
        if limit and needed > limit:
            record(skipped, Skip(phase, "prompt_too_long", f"prompt {p.query.prompt[:80]!r} needs {needed} positions "
                                 f"with {max_new_tokens} new tokens, more than the model's context of {limit}",
                                 **where), quiet)
            continue
        kept.append(p)
    return kept


def predictions_table(items: list[Item], templates: dict[str, str], conditions: list[str], model, tokenizer,
                      max_new_tokens: int, batch_size: int, device: str, *, cot_max_new_tokens: int | None = None,
                      seed: int = 0, few_shot_k: int = 1, wrap: Callable[[str], str] | None = None,
                      skipped: list[Skip] | None = None) -> pa.Table:
    """Every answerable prompt's row (module docstring); the others go to `skipped`. Every condition is planned
    and checked before anything is generated: when no two-hop question is left under any condition, this raises
    `KnrecallError` at once, with one message (and logs nothing else)."""
    pending: list[Skip] = []
    plans = []
    limit_of_model = context_limit(model)
    for position, condition in enumerate(conditions):
        plan = plan_prompts(items, templates, condition, seed, few_shot_k, single_hop=position == 0, wrap=wrap,
                            skipped=pending, quiet=True)
        limit = cot_max_new_tokens if condition in COT_CONDITIONS and cot_max_new_tokens else max_new_tokens
        plans.append((condition, limit, answerable(plan, tokenizer, limit_of_model, limit, condition, pending,
                                                   quiet=True)))
    if items and not any(p.kind == "two_hop" for _, _, plan in plans for p in plan):
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(Counter(s.reason for s in pending).items()))
        first = next((s for s in pending if s.kind == "two_hop"), pending[0] if pending else None)
        raise KnrecallError(f"every two-hop question was skipped ({reasons})"
                            + (f"; e.g. {first.what()}: {first.detail}" if first else ""))
    for skip in pending:
        record(skipped, skip)
    rows = []
    for condition, limit, plan in plans:
        answers = greedy_answers(model, tokenizer, [p.query for p in plan], limit, batch_size, device)
        for p in plan:
            answer = answers[p.query]
            two_hop = p.kind == "two_hop"
            rows.append({
                "case_id": p.item.case_id, "kind": p.kind, "paraphrase": p.paraphrase,
                "condition": condition if two_hop else "direct", "prompt": p.query.prompt, "gold": p.query.gold,
                **answer,
                "chain_names_bridge": chain_names_bridge(answer["generation"], p.item.fact1_ans, p.item.fact1_aliases)
                if two_hop and p.query.cot else None,
                "context_answer": p.context_answer,
                "follows": follows(answer["answer_span"], p.context_answer, p.query.gold, p.query.aliases)
                if two_hop and condition in CONFLICT_HOPS else None,
                "context_source": p.context_source,
            })
    return pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA)
