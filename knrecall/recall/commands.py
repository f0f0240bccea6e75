"""The recall phase's subcommands: `measure`, `recall`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import logging

from knrecall.cliutil import load_rule_model, model_meta, model_run_arguments, rule_neuron, rule_payload, set_threads


def cmd_measure(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.config import RecallParams, parse_params
    from knrecall.data.items import read_items
    from knrecall.io import provenance, read_parquet, write_parquet
    from knrecall.recall.measure import measure
    from knrecall.skips import metadata as skip_metadata

    payload = rule_payload(args.params, "measure", ("recall", "prompts", "model", "seed"))
    params = parse_params(payload["recall"], "--params (recall)", RecallParams)
    neuron = rule_neuron(payload, "measure", args.kns)
    set_threads(args.threads)
    items = read_items(args.items)
    predictions = pl.from_arrow(read_parquet(args.predictions))
    kns = pl.from_arrow(read_parquet(args.kns))
    spec, model, tokenizer, wrap = load_rule_model(payload, args)
    skipped: list = []
    baselines, activations, steps, profile = measure(items, predictions, kns, model, tokenizer, payload["prompts"],
                                                     params.null_per_fact, payload["seed"], args.batch_size,
                                                     params.profile_items, neuron, wrap=wrap, skipped=skipped)
    meta = provenance(payload, model=model_meta(args, spec, payload), device=args.device, **skip_metadata(skipped))
    write_parquet(baselines.to_arrow(), args.baselines, meta)
    write_parquet(steps.to_arrow(), args.steps, meta)
    write_parquet(profile.to_arrow(), args.profile, meta)
    write_parquet(activations.to_arrow(), args.out, meta)
    logging.info("measured %d activations -> %s", activations.height, args.out)


def add_measure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("measure", help="KN activations: baselines, reasoning-step positions, item and null activations")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--predictions", required=True, help="the model's predictions.parquet (generated ids)")
    p.add_argument("--kns", required=True, help="the model's kns.parquet")
    p.add_argument("--params", required=True, help="JSON with 'recall', 'prompts', 'model', 'seed' and "
                   "optionally 'attribution' ({'neuron': ...}, default ffn_input)")
    model_run_arguments(p, batch_size=16)
    p.add_argument("--baselines", required=True, help="output: baselines Parquet")
    p.add_argument("--steps", required=True, help="output: reasoning-step positions Parquet")
    p.add_argument("--profile", required=True, help="output: per-position profile Parquet")
    p.add_argument("--out", required=True, help="output: activations Parquet")
    p.set_defaults(func=cmd_measure)


def cmd_recall(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.attribution.kns import refined_sets
    from knrecall.config import RecallParams, parse_params
    from knrecall.data.facts import facts_of
    from knrecall.data.items import read_items
    from knrecall.io import provenance, read_metadata, read_parquet, write_json, write_parquet
    from knrecall.recall.analysis import analyse
    from knrecall.skips import counts as skip_counts

    payload = rule_payload(args.params, "recall", ("recall", "seed"))
    params = parse_params(payload["recall"], "--params (recall)", RecallParams)
    item_list = read_items(args.items)
    items = pl.from_arrow(read_parquet(args.items))
    predictions = pl.from_arrow(read_parquet(args.predictions))
    sets = refined_sets(pl.from_arrow(read_parquet(args.kns)))
    _, links = facts_of(item_list)
    link_table = pl.DataFrame([(c, h, f, len(sets.get(f, []))) for c, h, f in links],
                              schema={"case_id": pl.String, "hop": pl.Int8, "fact_id": pl.String, "n_kns": pl.Int64},
                              orient="row")
    answered, measured = read_metadata(args.predictions), read_metadata(args.activations)
    skipped = {"answer": answered.get("skipped_counts") or skip_counts([]),
               "measure": measured.get("skipped_counts") or skip_counts([])}
    exclude = {(s["case_id"], s["condition"]) for s in measured.get("skipped") or []
               if s.get("kind") == "two_hop" and s.get("condition")}
    table, metrics, scores, null_scores = analyse(items, predictions, pl.from_arrow(read_parquet(args.baselines)),
                                                  pl.from_arrow(read_parquet(args.activations)), link_table,
                                                  params.model_dump(mode="json"), payload["seed"], skipped=skipped,
                                                  conditions=answered.get("conditions"), exclude=exclude)
    meta = provenance(payload, model={"name": args.model_name})
    write_parquet(scores.to_arrow(), args.scores, meta)
    write_parquet(null_scores.to_arrow(), args.null_scores, meta)
    write_parquet(table.to_arrow(), args.out, meta)
    write_json({"model": args.model_name, **metrics}, args.summary)
    logging.info("recall: %d rows -> %s", table.height, args.out)


def add_recall(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recall", help="KN scores, recall decisions, TT/TF/FT/FF, MH/SC with bootstrap CIs")
    p.add_argument("--items", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--kns", required=True)
    p.add_argument("--baselines", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--scores", required=True, help="output: every score variant x position per item (Parquet)")
    p.add_argument("--null-scores", required=True, help="output: every score variant x position of the null samples")
    p.add_argument("--params", required=True, help="JSON with 'recall' and 'seed'")
    p.add_argument("--model-name", default="")
    p.add_argument("--out", required=True, help="per item, condition and hop Parquet")
    p.add_argument("--summary", required=True, help="the model's recall metrics (JSON)")
    p.set_defaults(func=cmd_recall)
