"""The validation phase's subcommands: `subject-site`, `scoreboard`, `validate-worlds`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from knrecall.cliutil import (load_rule_model, model_meta, model_run_arguments, read_json_file, read_metrics_json,
                              rule_payload, set_threads)
from knrecall.errors import KnrecallError


def cmd_subject_site(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.attribution.kns import Selection
    from knrecall.attribution.run import AttributionSettings
    from knrecall.config import (AttributionParams, InterventionParams, KnsParams, RecallParams, ValidationParams,
                                 parse_params)
    from knrecall.data.items import read_items
    from knrecall.io import provenance, read_parquet, write_json, write_parquet
    from knrecall.skips import metadata as skip_metadata

    payload = rule_payload(args.params, "subject-site", ("attribution", "kns", "recall", "interventions", "validation",
                                                         "prompts", "model", "seed"))
    attribution = parse_params(payload["attribution"], "--params (attribution)", AttributionParams)
    kns = parse_params(payload["kns"], "--params (kns)", KnsParams)
    recall = parse_params(payload["recall"], "--params (recall)", RecallParams)
    interventions = parse_params(payload["interventions"], "--params (interventions)", InterventionParams)
    validation = parse_params(payload["validation"], "--params (validation)", ValidationParams)
    outputs = (args.kns_out, args.scores_out, args.null_scores_out, args.causal_out)
    items = read_items(args.items)
    from knrecall.validation.subject_site import sample_items, subject_site

    why = ("validation.subject_site_items = 0" if validation.subject_site_items == 0
           else None if sample_items(items, validation.subject_site_items, payload["seed"])
           else "no item has a subject (the items' 'subject' field)")
    if why:  # the variant does not apply: empty outputs, no model loaded, the run goes on
        for path in outputs:
            write_parquet(pl.DataFrame(schema={"case_id": pl.String}).to_arrow(), path, provenance(payload))
        write_json({"model": args.model_name, "items": 0, "case_ids": [], "not_run": why}, args.out)
        logging.warning("subject-site KNs: not run (%s)", why)
        return
    set_threads(args.threads)
    predictions = pl.from_arrow(read_parquet(args.predictions))
    steps = pl.from_arrow(read_parquet(args.steps))
    spec, model, tokenizer, wrap = load_rule_model(payload, args)
    settings = AttributionSettings(attribution.steps, attribution.rule, attribution.target,
                                   attribution.store_threshold, attribution.full_maps, attribution.neuron)
    selection = Selection(kns.coarse_threshold, kns.refine_fraction, kns.refine_mode == "adaptive",
                          tuple(kns.adaptive_band))
    summary, *tables, skipped = subject_site(
        items, predictions, steps, model, tokenizer, payload["prompts"], settings, selection,
        n_items=validation.subject_site_items, null_per_fact=recall.null_per_fact,
        suppress_factor=interventions.suppress_factor, random_seeds=interventions.causal_random_seeds,
        seed=payload["seed"], model_name=args.model_name, max_rows=args.max_rows, batch_size=args.batch_size,
        wrap=wrap)
    meta = provenance(payload, model=model_meta(args, spec, payload), device=args.device, **skip_metadata(skipped))
    summary["skipped"] = meta["skipped_counts"]
    for table, path in zip(tables, outputs):
        write_parquet(table.to_arrow(), path, meta)
    write_json(summary, args.out)
    logging.info("subject-site KNs: %d items, %.2f KNs per fact -> %s", summary["items"],
                 summary["kns_per_fact_mean"] or 0.0, args.out)


def add_subject_site(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("subject-site", help="hop-1 KNs attributed at the subject: their scores and causal effects")
    for flag, what in (("--items", "items.parquet"), ("--predictions", "the model's predictions parquet"),
                       ("--steps", "the recall phase's steps.parquet")):
        p.add_argument(flag, required=True, help=f"input: {what}")
    p.add_argument("--params", required=True, help="JSON: attribution, kns, recall, interventions, validation, "
                   "prompts, model, seed")
    p.add_argument("--max-rows", type=int, default=256, help="IG rows per forward (each a copy of the suffix)")
    model_run_arguments(p, 16)
    p.add_argument("--out", required=True, help="output: subject_site.json (the summary)")
    for flag, what in (("--kns-out", "the subject-site KN table"), ("--scores-out", "their item scores"),
                       ("--null-scores-out", "their null scores"), ("--causal-out", "their causal effects")):
        p.add_argument(flag, required=True, help=f"output: {what} (parquet)")
    p.set_defaults(func=cmd_subject_site)


def cmd_scoreboard(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.config import RecallParams, parse_params
    from knrecall.io import read_metadata, read_parquet, write_json
    from knrecall.skips import counts as skip_counts
    from knrecall.validation.scoreboard import scoreboard

    payload = rule_payload(args.params, "scoreboard", ("recall", "seed"))
    params = parse_params(payload["recall"], "--params (recall)", RecallParams)
    frames = {name: pl.from_arrow(read_parquet(path)) for name, path in
              (("items", args.items), ("predictions", args.predictions), ("scores", args.scores),
               ("null_scores", args.null_scores), ("causal", args.causal))}
    board = scoreboard(frames["items"], frames["predictions"], frames["scores"], frames["null_scores"],
                       frames["causal"], {"variant": params.delta, "position": params.position},
                       params.bootstrap_resamples, payload["seed"], workers=args.threads)
    board["skipped"] = read_metadata(args.causal).get("skipped_counts") or skip_counts([])
    if args.subject_site:  # the subject-site variant's rows (knrecall.validation.subject_site), beside the others
        from knrecall.validation.scoreboard import pathway_answers, subject_site_rows

        site = read_json_file(Path(args.subject_site[0]), dict, "subject-site summary")
        if site.get("items"):
            scores, nulls, causal = (pl.from_arrow(read_parquet(path)) for path in args.subject_site[1:])
            site.update(subject_site_rows(scores, nulls, causal, site["case_ids"], frames["items"],
                                          pathway_answers(frames["items"], frames["predictions"]), frames["scores"],
                                          frames["null_scores"], frames["causal"], params.bootstrap_resamples,
                                          payload["seed"], workers=args.threads))
        board["subject_site"] = {key: value for key, value in site.items() if key != "case_ids"}
    write_json({"model": args.model_name, "scoreboard": board}, args.out)
    logging.info("scoreboard: %d rows; the rule chooses %s -> %s", len(board["rows"]), board["rule"]["chosen"],
                 args.out)


def add_scoreboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scoreboard", help="the validation scoreboard of every KN score variant x position")
    p.add_argument("--items", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--scores", required=True, help="the recall phase's scores.parquet")
    p.add_argument("--null-scores", required=True, help="the recall phase's null_scores.parquet")
    p.add_argument("--causal", required=True, help="the per-item causal effects (causal.parquet)")
    p.add_argument("--params", required=True, help="JSON with 'recall' and 'seed'")
    p.add_argument("--model-name", default="")
    p.add_argument("--subject-site", nargs=4, metavar=("SUMMARY", "SCORES", "NULL_SCORES", "CAUSAL"),
                   help="inputs of the subject-site variant (subject_site.json and its three parquet files), scored "
                   "and merged in")
    p.add_argument("--threads", type=int, default=1, help="scoreboard rows computed side by side (same result)")
    p.add_argument("--out", required=True, help="output: scoreboard.json")
    p.set_defaults(func=cmd_scoreboard)


def cmd_validate_worlds(args: argparse.Namespace) -> None:
    from knrecall.io import atomic_path, write_json
    from knrecall.validation.replicate import render_html, replicate

    if len(args.seeds) < 2:
        raise KnrecallError("validate-worlds: give at least two --seeds (the workflow's target needs the embedded "
                            "world, dataset.source: world, and a model with path 'world')")
    if len(set(args.seeds)) != len(args.seeds):
        raise KnrecallError(f"validate-worlds: --seeds repeat a seed: {args.seeds}")
    if len(args.recall) != len(args.seeds) or (args.world and len(args.world) != len(args.seeds)):
        raise KnrecallError(f"validate-worlds: give one --recall (and one --world) file per seed: {len(args.seeds)} "
                            f"seeds, {len(args.recall)} recall, {len(args.world or [])} world files")
    per_seed = {seed: {"recall": read_metrics_json(recall),
                       "world": read_metrics_json(args.world[i]) if args.world else {}}
                for i, (seed, recall) in enumerate(zip(args.seeds, args.recall))}
    if args.model:
        for seed, recall in zip(args.seeds, args.recall):
            if args.model not in (per_seed[seed]["recall"].get("models") or {}):
                raise KnrecallError(f"{recall}: no model '{args.model}' under 'models'")
    result = replicate(per_seed, args.model)
    write_json(result, args.out)
    if args.html:
        with atomic_path(args.html) as tmp:
            tmp.write_text(render_html(result))
    s = result["summary"]
    logging.info("validate-worlds: %d seeds, %d figures with a sign reference, %d agree, %d robust; same rule choice "
                 "in every seed: %s -> %s", len(args.seeds), s["n_figures"], s["n_agree"], s["n_robust"],
                 result["same_choice_every_seed"], args.out)


def add_validate_worlds(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-worlds", help="replication across worlds: every scoreboard figure per seed and "
                       "across seeds (mean, spread, sign agreement, robust)")
    p.add_argument("--seeds", nargs="*", type=int, default=[], required=True, help="the world seeds, in file order")
    p.add_argument("--recall", nargs="*", default=[], required=True, help="each seed's metrics/recall.json")
    p.add_argument("--world", nargs="*", default=[], help="each seed's metrics/world.json (pathway shares)")
    p.add_argument("--model", help="the model's name in recall.json (default: its first model)")
    p.add_argument("--out", required=True, help="the aggregate (JSON)")
    p.add_argument("--html", help="the report section (a standalone HTML page)")
    p.set_defaults(func=cmd_validate_worlds)
