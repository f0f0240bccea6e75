"""The predictions table: greedy answers with correctness: every single-hop paraphrase, and every two-hop question under each condition.

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

from collections import Counter
from collections.abc import Callable

import pyarrow as pa

from knrecall.answer.generate import context_limit, greedy_answers
from knrecall.answer.plan import COT_CONDITIONS, CONFLICT_HOPS, PlannedPrompt, plan_prompts
from knrecall.data.correctness import ANSWER_MARKER, is_correct
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.skips import Skip, record
from knrecall.targets import target_tokens

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
