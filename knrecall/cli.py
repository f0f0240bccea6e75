"""Command line: one subcommand per workflow rule (`python -m knrecall --help`).

Each subcommand parses its arguments, calls one phase, and writes its outputs atomically. Science parameters
arrive as JSON (`--params`) validated against the same typed model as `params.yaml`; runtime knobs (threads,
batch size, device) are plain flags. Input problems end in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from knrecall import __version__
from knrecall.errors import KnrecallError



def parse_json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnrecallError(f"--params for {what}: not valid JSON ({exc})") from None


def json_params(text: str, model, what: str):
    """`--params` JSON validated against one block of the typed parameter model."""
    from knrecall.config import parse_params

    return parse_params(parse_json(text, what), f"--params ({what})", model)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- world generate
def cmd_world_generate(args: argparse.Namespace) -> None:
    from knrecall.config import WorldParams
    from knrecall.io import write_json, write_jsonl
    from knrecall.world.generate import WorldSize, generate_world

    world = json_params(args.params, WorldParams, "world")
    size = WorldSize(world.people, world.cities, world.countries, world.companies, world.languages, world.currencies)
    generated = generate_world(args.seed, size, world.heldout_subject_fraction, world.heldout_bridge_fraction,
                               world.shortcut_fraction, args.qa_template)
    out = Path(args.out_dir)
    write_json(generated["items"], out / "items.json")
    write_jsonl(generated["corpus"], out / "corpus.jsonl")
    write_json({k: generated[k] for k in ("entities", "facts", "heldout_subjects", "heldout_bridges")}, out / "graph.json")
    logging.info("world: %d items, %d training examples -> %s", len(generated["items"]), len(generated["corpus"]), out)


# ------------------------------------------------------------------------------------------------- world train
def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise KnrecallError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
    return rows


def read_json_list(path: Path) -> list:
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KnrecallError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise KnrecallError(f"{path}: expected a JSON list of items")
    return data


def cmd_world_train(args: argparse.Namespace) -> None:
    from knrecall.config import WorldModelParams
    from knrecall.io import write_json
    from knrecall.world.tokenizer import build_tokenizer
    from knrecall.world.train import ModelShape, TrainRecipe, train_world_model

    params = json_params(args.params, WorldModelParams, "world_model")
    corpus = read_jsonl(Path(args.corpus))
    items = read_json_list(Path(args.items))
    texts = [f"{ex['prompt']} {ex['answer']} ." for ex in corpus]
    for item in items:
        texts += [item["two_hop"], *item["fact1_query"], *item["fact2_query"]]
    tokenizer = build_tokenizer(texts)
    shape = ModelShape(params.hidden_size, params.intermediate_size, params.num_layers, params.num_heads)
    recipe = TrainRecipe(params.epochs, params.batch_size, params.learning_rate, params.weight_decay,
                         params.warmup_steps, args.seed)
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


# ----------------------------------------------------------------------------------------------- world metrics
def cmd_world_metrics(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.io import read_parquet, write_json
    from knrecall.world.metrics import world_metrics

    items = pl.from_arrow(read_parquet(args.items))
    predictions = pl.from_arrow(read_parquet(args.predictions))
    training = json.loads(Path(args.training).read_text())
    metrics = world_metrics(items, predictions, training)
    write_json(metrics, args.out)
    logging.info("world metrics: one-hop %.3f, two-hop held-out subjects %s", metrics["onehop_accuracy"],
                 metrics["twohop_accuracy"]["heldout_subjects"])


# ------------------------------------------------------------------------------------------------- data import
def cmd_data_import(args: argparse.Namespace) -> None:
    from knrecall.data.importers import run_import

    count = run_import(Path(args.input), args.format, Path(args.out))
    logging.info("imported %d items from %s -> %s", count, args.input, args.out)


# ------------------------------------------------------------------------------------------------------ answer
def cmd_answer(args: argparse.Namespace) -> None:
    from knrecall.answer import predictions_table
    from knrecall.config import AnswerParams, ModelParams, parse_params
    from knrecall.data.items import read_items
    from knrecall.io import provenance, write_parquet
    from knrecall.models.load import ModelSpec, load_model

    payload = parse_json(args.params, "answer")
    if not isinstance(payload, dict) or not {"answer", "prompts", "model"} <= payload.keys():
        raise KnrecallError("--params for answer: expected a JSON object with 'answer', 'prompts' and 'model'")
    answer = parse_params(payload["answer"], "--params (answer)", AnswerParams)
    model_params = parse_params(payload["model"], "--params (model)", ModelParams)
    templates = payload["prompts"]
    set_threads(args.threads)
    items = read_items(args.items)
    path = args.model_path or model_params.path
    spec = ModelSpec(path, model_params.revision, model_params.dtype, model_params.trust_remote_code)
    model, tokenizer = load_model(spec, args.device)
    table = predictions_table(items, templates, list(answer.conditions), model, tokenizer,
                              answer.max_new_tokens, args.batch_size, args.device)
    meta = provenance(payload, model={"path": path, "revision": model_params.revision, "dtype": model_params.dtype,
                                      "name": args.model_name}, device=args.device)
    write_parquet(table, args.out, meta)
    logging.info("answered %d prompts -> %s", table.num_rows, args.out)


# ------------------------------------------------------------------------------------------------------ schema
def cmd_schema(args: argparse.Namespace) -> None:
    from knrecall.config import schema_yaml
    from knrecall.io import atomic_path

    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(schema_yaml())
    else:
        sys.stdout.write(schema_yaml())


def cmd_check_params(args: argparse.Namespace) -> None:
    from knrecall.config import load_params

    load_params(args.path)
    print(f"{args.path}: ok")


# -------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="knrecall", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"knrecall {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    world = sub.add_parser("world", help="the embedded synthetic world: generate, train, metrics")
    world_sub = world.add_subparsers(dest="world_command", required=True, metavar="STEP")
    p = world_sub.add_parser("generate", help="generate the world: items.json, corpus.jsonl, graph.json")
    p.add_argument("--params", required=True, help="JSON of the `world` block of params.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qa-template", default="Q: {question} A:", help="the `direct` prompt template")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_world_generate)

    p = world_sub.add_parser("train", help="train the world model (LLaMA architecture) on the CPU")
    p.add_argument("--corpus", required=True, help="corpus.jsonl from `world generate`")
    p.add_argument("--items", required=True, help="items.json from `world generate` (for the vocabulary)")
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

    data = sub.add_parser("data", help="datasets: import TFRKN / MQuAKE / JSON Lines into items.parquet")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    p = data_sub.add_parser("import", help="import a dataset file into the items table")
    p.add_argument("--input", required=True, help="dataset file (.json or .jsonl)")
    p.add_argument("--format", default="auto", choices=["auto", "tfrkn", "mquake", "jsonl"])
    p.add_argument("--out", required=True, help="items.parquet")
    p.set_defaults(func=cmd_data_import)

    p = sub.add_parser("answer", help="greedy answers and correctness for every prompt of every item")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--params", required=True, help="JSON with 'answer', 'prompts' and 'model' (one models entry)")
    p.add_argument("--model-path", help="override the model path (the workflow passes the trained world model)")
    p.add_argument("--model-name", default="", help="the model's name in params.yaml (recorded in metadata)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generation batch (runtime knob)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (runtime knob)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (runtime knob)")
    p.add_argument("--out", required=True, help="predictions.parquet")
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser("schema", help="print or write the JSON Schema of params.yaml (YAML form)")
    p.add_argument("--out", help="file to write (default: stdout)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("check-params", help="validate a params.yaml against the typed parameter model")
    p.add_argument("path", nargs="?", default="params.yaml")
    p.set_defaults(func=cmd_check_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s knrecall %(levelname)s %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except KnrecallError as exc:
        print(f"knrecall: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("knrecall: interrupted", file=sys.stderr)
        return 130
    return 0
