"""The validation phase's subcommands: `scoreboard`, `validate-worlds`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import logging

from knrecall.cliutil import read_metrics_json, rule_payload
from knrecall.errors import KnrecallError


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
                       params.bootstrap_resamples, payload["seed"])
    board["skipped"] = read_metadata(args.causal).get("skipped_counts") or skip_counts([])
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
