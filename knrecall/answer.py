"""Greedy answers with correctness: every single-hop paraphrase and every two-hop question, per condition.

Correctness (DESIGN.md §4): the gold answer or an alias appears, case-insensitively and as whole words, in the
extracted answer span (the generation up to its first full stop or line break). For every prompt we also record
whether the first generated token is the gold answer's first token, and the probability of that token (fp32
softmax at the predicting position).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import pyarrow as pa
import torch
from tqdm import tqdm

from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.prompts import render_prompt
from knrecall.targets import answer_token_ids

PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # hop1 | hop2 | two_hop
        pa.field("paraphrase", pa.int16(), nullable=False),  # index into fact{1,2}_query; 0 for two_hop
        pa.field("condition", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("generation", pa.string(), nullable=False),
        pa.field("answer_span", pa.string(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("first_token_correct", pa.bool_(), nullable=False),
        pa.field("gold_first_token_prob", pa.float32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Query:
    prompt: str
    gold: str
    aliases: tuple[str, ...]


def normalize(text: str) -> str:
    text = re.sub(r"\s+([?.!,:;])", r"\1", text.lower())
    return " ".join(re.findall(r"\w+|[^\w\s]", text))


def extract_span(generation: str) -> str:
    return re.split(r"[.\n]", generation, maxsplit=1)[0].strip()


def is_correct(span: str, gold: str, aliases: tuple[str, ...]) -> bool:
    haystack = f" {normalize(span)} "
    return any(f" {normalize(name)} " in haystack for name in (gold, *aliases) if name.strip())


def queries_for(items: list[Item], templates: dict[str, str], condition: str) -> list[tuple[Item, str, int, Query]]:
    """(item, kind, paraphrase index, query) for every prompt of every item under `condition`."""
    rows = []
    for item in items:
        for kind, questions, gold, aliases in (
            ("hop1", item.fact1_query, item.fact1_ans, item.fact1_aliases),
            ("hop2", item.fact2_query, item.fact2_ans, item.answer_aliases),
            ("two_hop", [item.two_hop], item.fact2_ans, item.answer_aliases),
        ):
            for index, question in enumerate(questions):
                prompt = render_prompt(templates, condition if kind == "two_hop" else "direct", question)
                rows.append((item, kind, index, Query(prompt, gold, tuple(aliases))))
    return rows


def stop_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id]
    for stop in (".", "\n"):
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


@torch.no_grad()
def greedy_answers(model, tokenizer, queries: list[Query], max_new_tokens: int, batch_size: int, device: str) -> dict[Query, dict]:
    """Greedy generation for each distinct query; returns per query its generation, span and correctness."""
    distinct = sorted(set(queries), key=lambda q: (len(q.prompt), q.prompt, q.gold))
    stops = stop_token_ids(tokenizer)
    results: dict[Query, dict] = {}
    for start in tqdm(range(0, len(distinct), batch_size), desc="answer", unit="batch", file=sys.stderr, mininterval=5):
        batch = distinct[start : start + batch_size]
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
            generation = tokenizer.decode(new_tokens[row], skip_special_tokens=True)
            span = extract_span(generation)
            results[query] = {
                "generation": generation,
                "answer_span": span,
                "correct": is_correct(span, query.gold, query.aliases),
                "first_token_correct": int(new_tokens[row, 0]) == gold_first,
                "gold_first_token_prob": float(first_probs[row, gold_first]),
            }
    return results


def predictions_table(items: list[Item], templates: dict[str, str], conditions: list[str], model, tokenizer,
                      max_new_tokens: int, batch_size: int, device: str) -> pa.Table:
    rows = []
    for condition in conditions:
        plan = queries_for(items, templates, condition)
        answers = greedy_answers(model, tokenizer, [q for *_, q in plan], max_new_tokens, batch_size, device)
        for item, kind, index, query in plan:
            rows.append({"case_id": item.case_id, "kind": kind, "paraphrase": index, "condition": condition,
                         "prompt": query.prompt, "gold": query.gold, **answers[query]})
    return pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA)
