"""Greedy generation of answers in batches: stop tokens, the context check, and each answer's first-token probability.

`greedy_answers` generates once per distinct query (`knrecall.answer.plan.Query`) and judges its answer span
(`knrecall.data.correctness`); the first generated token's probability is an fp32 softmax at the predicting position.
"""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from knrecall.answer.plan import Query
from knrecall.data.correctness import extract_span, is_correct
from knrecall.errors import KnrecallError
from knrecall.targets import answer_token_ids

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
