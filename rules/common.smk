# Helpers and config validation shared by every rule file.
import glob
import json
import os
import sys

from knrecall.config import parse_params, validate_against_schema
from knrecall.errors import KnrecallError
from knrecall.report import FIGURES
from knrecall.versions import IMPLEMENTATION

try:
    validate_against_schema(config, workflow.source_path("../schemas/params.schema.yaml"))
    PARAMS = parse_params(config, "params.yaml")
except KnrecallError as exc:
    sys.exit(f"knrecall: error: {exc}")

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
WORLD_DIR = f"{RESULTS}/world"
WORLD_MODEL_DIR = f"{RESULTS}/models/world"
WORLD_MODEL_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training.json",
    "train_log.jsonl",
]
MODELS = list(PARAMS.models)
WORLD_MODELS = [name for name, spec in PARAMS.models.items() if spec.path == "world"]


wildcard_constraints:
    model="|".join(MODELS),
    shard=r"\d{4}",


def as_json(obj):
    """A science parameter block as compact JSON for a CLI `--params` argument."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def model_block(name):
    """A model's params.yaml entry as the rules pass it. `chat_template` only when on, so that runs made before the
    key existed keep their parameters (and Snakemake does not rerun them)."""
    block = PARAMS.models[name].model_dump(mode="json")
    if not block.get("chat_template"):
        block.pop("chat_template", None)
    return block


def world_model_outputs():
    return [f"{WORLD_MODEL_DIR}/{name}" for name in WORLD_MODEL_FILES]


def model_inputs(wildcards):
    """The trained world model's files when the model is the world model; nothing for hub ids and paths."""
    return world_model_outputs() if PARAMS.models[wildcards.model].path == "world" else []


def model_path(wildcards):
    path = PARAMS.models[wildcards.model].path
    return WORLD_MODEL_DIR if path == "world" else path


def items_source():
    if PARAMS.dataset.source == "world":
        return rules.generate_world.output.world_items
    return PARAMS.dataset.path


def shard_files(model, suffix):
    """The explicit list of a model's attribution shards (stable names shard-0000 ...)."""
    return [f"{RESULTS}/attribution/{model}/shard-{index:04d}.{suffix}" for index in range(PARAMS.attribution.shards)]


def intervention_shard_files(model):
    """The explicit list of a model's intervention shards (stable names shard-0000 ...)."""
    return [
        f"{RESULTS}/interventions/{model}/shard-{index:04d}.parquet" for index in range(PARAMS.interventions.shards)
    ]


def remove_stale_shards():
    """Delete shard files left by an earlier run with more shards (no rule writes them any longer), so that
    results/ and what DVC versions hold only the current shards. Called once a run has succeeded."""
    for model in MODELS:
        keep = set(shard_files(model, "parquet") + shard_files(model, "layers.parquet"))
        keep |= set(intervention_shard_files(model))
        for phase in ("attribution", "interventions"):
            for path in sorted(glob.glob(f"{RESULTS}/{phase}/{model}/shard-*.parquet")):
                if path not in keep:
                    os.remove(path)
                    print(f"knrecall: removed {path} (a shard of an earlier run with more shards)", file=sys.stderr)


def metrics_files():
    files = [f"{RESULTS}/metrics/{name}.json" for name in ("attribution", "recall", "interventions")]
    if PARAMS.dataset.source == "world" and WORLD_MODELS:
        files.append(f"{RESULTS}/metrics/world.json")
    return files


def dataset_description():
    if PARAMS.dataset.source == "world":
        return f"the embedded synthetic world (seed {PARAMS.seed})"
    return f"{PARAMS.dataset.source}: {PARAMS.dataset.path}"


def all_targets():
    targets = [f"{RESULTS}/predictions/{name}.parquet" for name in MODELS]
    targets += [f"{RESULTS}/kns/{name}.parquet" for name in MODELS]
    targets.append(f"{RESULTS}/metrics/attribution.json")
    targets.append(f"{RESULTS}/metrics/recall.json")
    targets.append(f"{RESULTS}/metrics/interventions.json")
    targets.append(f"{RESULTS}/report/index.html")
    if PARAMS.dataset.source == "world" and WORLD_MODELS:
        targets.append(f"{RESULTS}/metrics/world.json")
    return targets
