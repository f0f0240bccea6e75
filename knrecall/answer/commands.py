"""The answering phase's subcommand: `answer`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import logging

from knrecall.cliutil import load_rule_model, model_meta, rule_payload, set_threads
from knrecall.errors import KnrecallError


def cmd_answer(args: argparse.Namespace) -> None:
    from knrecall.answer import predictions_table
    from knrecall.config import AnswerParams, parse_params
    from knrecall.data.items import read_items
    from knrecall.io import provenance, write_parquet
    from knrecall.skips import counts as skip_counts
    from knrecall.skips import metadata as skip_metadata
    from knrecall.skips import table as skip_table

    payload = rule_payload(args.params, "answer", ("answer", "prompts", "model", "seed"))
    answer = parse_params(payload["answer"], "--params (answer)", AnswerParams)
    set_threads(args.threads)
    items = read_items(args.items)
    spec, model, tokenizer, wrap = load_rule_model(payload, args)
    skipped: list = []
    try:
        table = predictions_table(items, payload["prompts"], list(answer.conditions), model, tokenizer,
                                  answer.max_new_tokens, args.batch_size, args.device,
                                  cot_max_new_tokens=answer.cot_max_new_tokens, seed=payload["seed"],
                                  few_shot_k=answer.few_shot_exemplars, wrap=wrap, skipped=skipped)
    except KnrecallError as exc:
        raise KnrecallError(f"model '{args.model_name or spec.path}': {exc}") from None
    meta = provenance(payload, model=model_meta(args, spec, payload), device=args.device,
                      conditions=list(answer.conditions), **skip_metadata(skipped))
    if args.skipped:
        write_parquet(skip_table(skipped), args.skipped, meta)
    write_parquet(table, args.out, meta)
    logging.info("answered %d prompts -> %s; skipped %d (%s)", table.num_rows, args.out, len(skipped),
                 skip_counts(skipped)["by_reason"] or "none")


def add_answer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("answer", help="greedy answers and correctness for every prompt of every item")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--params", required=True, help="JSON with 'answer', 'prompts', 'model' (one models entry) and 'seed'")
    p.add_argument("--model-path", help="override the model path (the workflow passes the trained world model)")
    p.add_argument("--model-name", default="", help="the model's name in params.yaml (recorded in metadata)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generation batch (runtime knob)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (runtime knob)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (runtime knob)")
    p.add_argument("--out", required=True, help="predictions.parquet")
    p.add_argument("--skipped", help="the skipped table (Parquet): one row per prompt left out, with the reason")
    p.set_defaults(func=cmd_answer)
