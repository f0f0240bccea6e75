"""The embedded world's subcommands: `world generate`, `world train`, `world metrics`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from knrecall.cliutil import json_params, parse_json, read_json_list, read_jsonl


def cmd_world_generate(args: argparse.Namespace) -> None:
    from knrecall.config import WorldParams
    from knrecall.prompts import DEFAULT_TEMPLATES
    from knrecall.io import write_json, write_jsonl
    from knrecall.world.generate import WorldSize, generate_world

    world = json_params(args.params, WorldParams, "world")
    templates = {**DEFAULT_TEMPLATES, **(parse_json(args.templates, "templates") if args.templates else {})}
    size = WorldSize(world.people, world.cities, world.countries, world.companies, world.languages, world.currencies)
    generated = generate_world(args.seed, size, world.heldout_subject_fraction, world.heldout_bridge_fraction,
                               world.shortcut_fraction, templates["direct"], cot_fraction=world.cot_fraction,
                               context_fraction=world.context_fraction,
                               context_min_per_relation=world.context_min_per_relation,
                               few_shot_prompts=world.few_shot_prompts, pathway_fraction=world.pathway_fraction,
                               templates=templates)
    out = Path(args.out_dir)
    write_json(generated["items"], out / "items.json")
    write_jsonl(generated["corpus"], out / "corpus.jsonl")
    write_json({k: generated[k] for k in ("entities", "facts", "heldout_subjects", "heldout_bridges")}, out / "graph.json")
    logging.info("world: %d items, %d training examples -> %s", len(generated["items"]), len(generated["corpus"]), out)


def cmd_world_train(args: argparse.Namespace) -> None:
    from knrecall.config import WorldModelParams
    from knrecall.prompts import DEFAULT_TEMPLATES, EXEMPLAR_TEMPLATE
    from knrecall.io import write_json
    from knrecall.world.tokenizer import world_tokenizer
    from knrecall.world.train import ModelShape, TrainRecipe, train_world_model

    params = json_params(args.params, WorldModelParams, "world_model")
    corpus = read_jsonl(Path(args.corpus))
    items = read_json_list(Path(args.items))
    templates = parse_json(args.templates, "templates") if args.templates else DEFAULT_TEMPLATES
    tokenizer = world_tokenizer(corpus, items, templates, [EXEMPLAR_TEMPLATE])
    shape = ModelShape(params.hidden_size, params.intermediate_size, params.num_layers, params.num_heads)
    recipe = TrainRecipe(params.epochs, params.batch_size, params.learning_rate, params.weight_decay,
                         params.warmup_steps, args.seed, params.optimizer, params.muon_learning_rate)
    out = Path(args.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*"):  # left behind by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = train_world_model(corpus, tokenizer, shape, recipe, staging, staging / "train_log.jsonl", args.threads)
        write_json(summary, staging / "training.json")
        staging.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logging.info("world model: %s parameters, %.1f s -> %s", summary["model_parameters"], summary["train_seconds"], out)


def cmd_world_metrics(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.io import read_metadata, read_parquet, write_json
    from knrecall.world.metrics import world_metrics

    items = pl.from_arrow(read_parquet(args.items))
    predictions = pl.from_arrow(read_parquet(args.predictions))
    training = json.loads(Path(args.training).read_text())
    metrics = world_metrics(items, predictions, training,
                            skipped=read_metadata(args.predictions).get("skipped_counts"))
    write_json(metrics, args.out)
    logging.info("world metrics: one-hop %.3f, two-hop held-out subjects %s", metrics["onehop_accuracy"],
                 metrics["twohop_accuracy"]["heldout_subjects"])


def add_world(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="the embedded synthetic world: generate, train, metrics")
    world_sub = world.add_subparsers(dest="world_command", required=True, metavar="STEP")
    p = world_sub.add_parser("generate", help="generate the world: items.json, corpus.jsonl, graph.json")
    p.add_argument("--params", required=True, help="JSON of the `world` block of params.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--templates", help="JSON of the `prompts` block of params.yaml (default: the built-in templates)")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_world_generate)
    p = world_sub.add_parser("train", help="train the world model (LLaMA architecture) on the CPU")
    p.add_argument("--corpus", required=True, help="corpus.jsonl from `world generate`")
    p.add_argument("--items", required=True, help="items.json from `world generate` (for the vocabulary)")
    p.add_argument("--templates", help="JSON of the `prompts` block (their words join the vocabulary)")
    p.add_argument("--params", required=True, help="JSON of the `world_model` block of params.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (runtime knob)")
    p.add_argument("--out-dir", required=True, help="model directory (save_pretrained layout + training.json)")
    p.set_defaults(func=cmd_world_train)
    p = world_sub.add_parser("metrics", help="world.json: accuracies by split and ground truth")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--predictions", required=True, help="predictions.parquet of the world model")
    p.add_argument("--training", required=True, help="training.json of the world model")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_world_metrics)
