"""Benchmark: training the world model, the recipe before this project's speed work against today's, in one run.

    .venv/bin/python benchmarks/training.py [--threads 2] [--seed 0] [--quick] [--skip-old]

Both recipes train on the same corpus: the default world (`params.yaml`'s defaults, `knrecall world generate`'s
code) with the same tokenizer, the same model shape and seed. They differ in what a recipe is:

- old: the recipe of the commits before Muon: AdamW on every parameter (lr 2e-3, weight decay 0.1, batch 128,
  warm-up 50 steps, cosine to 10 %), 20 epochs, the LM head on every position (`model(input_ids, labels=...)`).
- new: `params.yaml`'s `world_model` defaults (Muon for the decoder matrices, AdamW for embeddings and norms, the LM
  head on the answer positions only).

Each trained model is then evaluated as the workflow does it (`knrecall answer`'s `predictions_table` under all
five conditions, `knrecall world metrics`), and the figures are printed side by side: training seconds, steps,
seconds per epoch, tokens per second (real tokens: padding excluded), and the accuracies the issue's quality bar
names (one-hop, held-out subjects, held-out bridges, zero- and few-shot chain of thought, follows-context under
both conflicts). The last line of stdout is one JSON object with the same figures, plus `train_seconds_ratio` =
new / old. `--quick` trains on a small world for a smoke test (minutes become seconds; the accuracies mean
nothing). `--skip-old` trains only the new recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, in case knrecall is not installed

import polars as pl  # noqa: E402
import torch  # noqa: E402

from knrecall.answer import predictions_table  # noqa: E402
from knrecall.config import WorldModelParams, WorldParams  # noqa: E402
from knrecall.data.conditions import CONDITIONS, DEFAULT_TEMPLATES, EXEMPLAR_TEMPLATE  # noqa: E402
from knrecall.data.importers import import_dataset  # noqa: E402
from knrecall.data.items import items_table  # noqa: E402
from knrecall.models.load import ModelSpec, load_model  # noqa: E402
from knrecall.world.generate import WorldSize, generate_world  # noqa: E402
from knrecall.world.metrics import world_metrics  # noqa: E402
from knrecall.world.tokenizer import world_tokenizer  # noqa: E402
from knrecall.world.train import ModelShape, TrainRecipe, train_world_model  # noqa: E402

OLD = {"optimizer": "adamw", "epochs": 20, "batch_size": 128, "learning_rate": 0.002, "weight_decay": 0.1,
       "warmup_steps": 50, "head_on_answers_only": False}
QUICK_WORLD = {"people": 40, "cities": 8, "countries": 4, "companies": 6, "languages": 2, "currencies": 2}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_and_evaluate(name: str, recipe: TrainRecipe, shape: ModelShape, world: dict, tokenizer, threads: int,
                       workdir: Path) -> dict:
    log(f"[{name}] training: {recipe}")
    out = workdir / name
    summary = train_world_model(world["corpus"], tokenizer, shape, recipe, out, workdir / f"{name}.log.jsonl",
                                threads)
    log(f"[{name}] {summary['train_seconds']:.1f} s; evaluating under {', '.join(CONDITIONS)} ...")
    model, tok = load_model(ModelSpec(str(out)))
    (workdir / "items.json").write_text(json.dumps(world["items"]))
    items = import_dataset(workdir / "items.json", "tfrkn")
    predictions = predictions_table(items, DEFAULT_TEMPLATES, list(CONDITIONS), model, tok, 8, 64, "cpu",
                                    cot_max_new_tokens=48, seed=recipe.seed, few_shot_k=1)
    metrics = world_metrics(pl.from_arrow(items_table(items)), pl.from_arrow(predictions), summary)
    by = metrics["by_condition"]
    return {
        "recipe": name,
        "optimizer": recipe.optimizer,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "seconds_per_epoch": summary["seconds_per_epoch"],
        "tokens_per_second": summary["tokens_per_second"],
        "onehop_accuracy": metrics["onehop_accuracy"],
        "heldout_subjects": metrics["twohop_accuracy"]["heldout_subjects"],
        "heldout_bridges": metrics["twohop_accuracy"]["heldout_bridges"],
        "zero_shot_cot": by["zero_shot_cot"]["accuracy"],
        "few_shot_cot": by["few_shot_cot"]["accuracy"],
        "follows_context_hop1": by["conflict_hop1"]["follows_context"],
        "follows_context_hop2": by["conflict_hop2"]["follows_context"],
    }


COLUMNS = [("recipe", "recipe", "{}"), ("epochs", "epochs", "{}"), ("steps", "steps", "{}"),
           ("train s", "train_seconds", "{:.1f}"), ("s/epoch", "seconds_per_epoch", "{:.1f}"),
           ("tokens/s", "tokens_per_second", "{}"), ("one-hop", "onehop_accuracy", "{:.3f}"),
           ("held-out subj.", "heldout_subjects", "{:.3f}"), ("held-out bridges", "heldout_bridges", "{:.3f}"),
           ("0-shot CoT", "zero_shot_cot", "{:.3f}"), ("few-shot CoT", "few_shot_cot", "{:.3f}"),
           ("context h1", "follows_context_hop1", "{:.3f}"), ("context h2", "follows_context_hop2", "{:.3f}")]


def table(rows: list[dict]) -> str:
    cells = [[title for title, _, _ in COLUMNS]]
    cells += [[fmt.format(row[key]) for _, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the world model with the old and the new recipe, side by side.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a small world (smoke test; accuracies mean nothing)")
    p.add_argument("--skip-old", action="store_true", help="train the new recipe only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    world_params = WorldParams(**(QUICK_WORLD if args.quick else {}))
    size = WorldSize(world_params.people, world_params.cities, world_params.countries, world_params.companies,
                     world_params.languages, world_params.currencies)
    world = generate_world(args.seed, size, world_params.heldout_subject_fraction,
                           world_params.heldout_bridge_fraction, world_params.shortcut_fraction,
                           DEFAULT_TEMPLATES["direct"], cot_fraction=world_params.cot_fraction,
                           context_fraction=world_params.context_fraction,
                           context_min_per_relation=world_params.context_min_per_relation,
                           few_shot_prompts=world_params.few_shot_prompts,
                           pathway_fraction=world_params.pathway_fraction, templates=DEFAULT_TEMPLATES)
    tokenizer = world_tokenizer(world["corpus"], world["items"], DEFAULT_TEMPLATES, [EXEMPLAR_TEMPLATE])
    new = WorldModelParams()
    shape = ModelShape(new.hidden_size, new.intermediate_size, new.num_layers, new.num_heads)
    recipes = {"new": TrainRecipe(new.epochs, new.batch_size, new.learning_rate, new.weight_decay, new.warmup_steps,
                                  args.seed, new.optimizer, new.muon_learning_rate)}
    if not args.skip_old:
        recipes = {"old": TrainRecipe(seed=args.seed, **OLD), **recipes}
    if args.quick:
        recipes = {name: TrainRecipe(**{**r.__dict__, "epochs": 2}) for name, r in recipes.items()}
    log(f"corpus: {len(world['corpus'])} examples, {len(world['items'])} items, vocabulary {len(tokenizer)}")
    with tempfile.TemporaryDirectory(prefix="knrecall-training-bench-") as tmp:
        rows = [train_and_evaluate(name, recipe, shape, world, tokenizer, args.threads, Path(tmp))
                for name, recipe in recipes.items()]
    by_name = {row["recipe"]: row for row in rows}
    ratio = by_name["new"]["train_seconds"] / by_name["old"]["train_seconds"] if "old" in by_name else None
    print(f"training benchmark: the world model, old recipe vs new ({'quick' if args.quick else 'default world'})")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}; "
          f"corpus {len(world['corpus'])} examples; tokens/s counts real tokens (no padding)")
    print(table(rows))
    if ratio is not None:
        print(f"new / old training seconds: {ratio:.3f} ({1 / ratio:.1f}x faster)")
    print(json.dumps({"quick": args.quick, "torch": torch.__version__, "threads": args.threads, "seed": args.seed,
                      "n_examples": len(world["corpus"]), "recipes": rows, "train_seconds_ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
