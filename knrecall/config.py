"""The typed parameter model: the single source of truth for `params.yaml` and its JSON Schema.

`params.yaml` holds science parameters only (everything that changes results). Runtime knobs (threads, batch
sizes, device) live in the Snakemake profiles. The schema in `schemas/params.schema.yaml` is generated from
`Params` by `python -m knrecall schema`; a test fails when it is stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from knrecall.prompts import DEFAULT_TEMPLATES
from knrecall.errors import KnrecallError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetParams(Strict):
    source: Literal["world", "tfrkn", "mquake", "jsonl"] = Field(
        "world", description="Where the two-hop items come from: the embedded world, or a file in one of the formats."
    )
    path: str | None = Field(None, description="Input file for tfrkn / mquake / jsonl sources (unused for world).")

    @model_validator(mode="after")
    def path_for_files(self) -> "DatasetParams":
        if self.source != "world" and not self.path:
            raise ValueError(f"dataset.path is required when dataset.source is '{self.source}'")
        return self


class WorldParams(Strict):
    people: int = Field(400, ge=4, description="Number of people (subjects of born_in and works_for).")
    cities: int = Field(48, ge=2, description="Number of cities.")
    countries: int = Field(12, ge=2, description="Number of countries.")
    companies: int = Field(36, ge=2, description="Number of companies.")
    languages: int = Field(8, ge=2, description="Number of languages.")
    currencies: int = Field(8, ge=2, description="Number of currencies.")
    heldout_subject_fraction: float = Field(0.3, ge=0, le=1, description="Share of subjects whose two-hop questions are never trained.")
    heldout_bridge_fraction: float = Field(0.15, ge=0, le=1, description="Share of bridge entities no trained two-hop question passes through.")
    shortcut_fraction: float = Field(0.3, ge=0, le=1, description="Share of held-out items that get planted shortcut sentences (s -> o2).")
    pathway_fraction: float = Field(
        0.25, ge=0, le=1,
        description="Share of the held-out items without a planted shortcut that get a conflicting shortcut instead "
        "(the composition's statements with s -> o2', o2' another entity of the answer's type), so that the answer "
        "tells which pathway won: o2 (composition through the bridge) or o2' (the shortcut). These items are left "
        "out of the accuracy figures and reported apart. 0 leaves the world exactly as without it.",
    )
    cot_fraction: float = Field(
        1.0, ge=0, le=1,
        description="Share of train_subject items whose training text also has a chain-of-thought example (their "
        "two-hop question under the zero-shot or, for half of them, one-shot CoT prompt; answer: the chain, then "
        "'So the answer is o2'); above 0, every single-hop fact also gets one zero-shot CoT example "
        "('o. So the answer is o'). 0 leaves the world exactly as without it.",
    )
    context_fraction: float = Field(
        0.5, ge=0, le=1,
        description="Share of train_subject items whose training text also has context passages (the conflict "
        "prompts with a truthful and a counterfactual passage for hop 1 and hop 2; answer: what the passage "
        "implies). 0 leaves the world exactly as without it.",
    )
    context_min_per_relation: int = Field(
        60, ge=0,
        description="Floor per hop-2 relation on the context passages: a relation with fewer than this many "
        "context items (from context_fraction) gets more of its train_subject items, and, when it has too few, "
        "several counterfactual passages (distinct fake entities) per item and hop, so that a rare relation is "
        "trained to follow a context on about this many passages (with context_fraction above 0). 0 leaves the "
        "world exactly as without it.",
    )
    few_shot_prompts: int = Field(
        2, ge=1,
        description="Few-shot CoT prompts per CoT item in the training text, each with another exemplar (drawn from "
        "the train_subject items). 1 leaves the world exactly as without it.",
    )


class WorldModelParams(Strict):
    hidden_size: int = Field(128, ge=8, description="Hidden size of the world's LLaMA model.")
    intermediate_size: int = Field(512, ge=8, description="FFN width (the neurons knrecall attributes).")
    num_layers: int = Field(4, ge=1, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide by it).")
    epochs: int = Field(4, ge=1, description="Passes over the training corpus.")
    batch_size: int = Field(64, ge=1, description="Training batch size (examples).")
    optimizer: Literal["muon", "adamw"] = Field(
        "muon", description="muon: Muon for the decoder's weight matrices, AdamW for embeddings and norms; adamw: "
        "AdamW for everything (the recipe before Muon: 20 epochs, batch 128, learning_rate 0.002).")
    learning_rate: float = Field(0.004, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay to 10 %).")
    muon_learning_rate: float = Field(0.008, gt=0, description="Peak Muon learning rate (optimizer muon; same schedule), "
                                      "scaled per matrix by 0.2 sqrt(max(rows, cols)).")
    weight_decay: float = Field(0.1, ge=0, description="Weight decay on matrices (AdamW and Muon).")
    warmup_steps: int = Field(50, ge=1, description="Linear warm-up steps.")

    @model_validator(mode="after")
    def heads_divide(self) -> "WorldModelParams":
        if self.hidden_size % self.num_heads:
            raise ValueError("world_model.hidden_size must be divisible by world_model.num_heads")
        return self


class ModelParams(Strict):
    path: str = Field(description="Hub id, local directory, or 'world' for the model this workflow trains.")
    revision: str | None = Field(None, description="Hub revision (commit, tag or branch); recorded in outputs.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype (changes results, so it is science).")
    trust_remote_code: bool = Field(False, description="Allow the checkpoint's own Python code (off unless you trust it).")
    allow_pickle: bool = Field(False, description="Allow pickled weights (pytorch_model.bin, *.pt) when there are no "
                               "safetensors; unpickling can run code, so off unless you trust the files.")
    chat_template: bool = Field(
        False, description="Instruction-tuned models: wrap every question prompt in the tokenizer's own chat template "
        "(one user turn; the answer follows the assistant turn), in every phase; the wrapped prompt is stored in the "
        "predictions. A tokenizer without a chat template is an error naming the model.")


Condition = Literal["direct", "zero_shot_cot", "few_shot_cot", "conflict_hop1", "conflict_hop2"]


class AnswerParams(Strict):
    conditions: list[Condition] = Field(
        ["direct", "zero_shot_cot", "few_shot_cot", "conflict_hop1", "conflict_hop2"], min_length=1,
        description="Prompt conditions to answer the two-hop questions under.")
    max_new_tokens: int = Field(8, ge=1, description="Greedy generation length limit (direct and conflict conditions).")
    cot_max_new_tokens: int = Field(48, ge=1, description="Greedy generation length limit for chain-of-thought conditions.")
    few_shot_exemplars: int = Field(1, ge=1, description="Exemplars in a few_shot_cot prompt (never the item itself).")


class AttributionParams(Strict):
    steps: int = Field(20, ge=2, description="IG quadrature steps m (one step is not integrated gradients).")
    rule: Literal["gauss_legendre", "midpoint", "left", "right", "linspace"] = Field(
        "gauss_legendre", description="Quadrature rule over alpha in [0, 1]."
    )
    target: Literal["prob", "logprob"] = Field("prob", description="Attributed quantity: gold-token probability or log-probability.")
    neuron: Literal["ffn_input", "pre_activation"] = Field(
        "ffn_input", description="What a neuron is: the input of the FFN output projection (ffn_input: down_proj, "
        "c_proj, fc_out, dense_4h_to_h, fc2), or the output of the FFN's first projection before the activation "
        "function (pre_activation: gate_proj, the gate half of Phi-3's gate_up_proj, c_fc, fc_in, dense_h_to_4h, "
        "fc1; what EleutherAI's knowledge-neurons hooks). Attribution, KN selection, activations and interventions "
        "all use it.")
    shards: int = Field(2, ge=1, description="Attribution shards (jobs); facts are assigned by a hash of their id.")
    store_threshold: float = Field(0.1, ge=0, le=1, description="Store neurons with attribution >= this x the prompt's maximum.")
    full_maps: bool = Field(False, description="Store every neuron of every prompt (large) instead of thresholded coordinates.")


class KnsParams(Strict):
    coarse_threshold: float = Field(0.2, gt=0, le=1, description="t: coarse KNs have attribution > t x the prompt's maximum.")
    refine_fraction: float = Field(0.5, gt=0, le=1, description="p: refined KNs are coarse in at least this share of a fact's prompts.")
    refine_mode: Literal["fixed", "adaptive"] = Field("fixed", description="adaptive moves p in 0.05 steps until the mean KN count per fact is in adaptive_band.")
    adaptive_band: list[float] = Field([2.0, 5.0], min_length=2, max_length=2, description="[low, high] mean refined KNs per fact (adaptive mode).")

    @model_validator(mode="after")
    def band(self) -> "KnsParams":
        if self.adaptive_band[0] > self.adaptive_band[1]:
            raise ValueError("kns.adaptive_band must be [low, high] with low <= high")
        return self


class RecallParams(Strict):
    delta: Literal["ratio", "difference", "projection", "ratio_of_sums"] = Field(
        "projection", description="KN score variant of the reported recall decisions (TT/TF/FT/FF, MH/SC): mean "
        "a_i / b_i (ratio, the paper's reading), mean a_i - b_i (difference), sum a_i b_i / sum b_i^2 (projection) or "
        "sum a_i / sum b_i (ratio_of_sums). The scoreboard evaluates every variant; the default is its rule's choice "
        "on the default world (README, 'Which measurement: the rule').")
    position: Literal["step", "last_prompt", "subject_last"] = Field(
        "step", description="Where in the two-hop sequence the reported KN score is read: the hop's reasoning step "
        "(the last prompt token without chain of thought), the last prompt token, or the subject's last token. The "
        "scoreboard evaluates every position.")
    profile_items: int = Field(40, ge=0, description="Items (a deterministic sample) whose KN scores are profiled "
                               "at every prompt position x layer group (0: no profile).")
    threshold: Literal["null", "fixed"] = Field("null", description="Recall decision: above the null-distribution quantile of the fact's KN set (null) or above tau (fixed).")
    tau: float = Field(1.0, description="The fixed threshold (threshold: fixed).")
    null_quantile: float = Field(0.95, gt=0, lt=1, description="Quantile of the null distribution used as threshold.")
    null_per_fact: int = Field(50, ge=2, description="Other items (not involving the fact) sampled for its null distribution.")
    bootstrap_resamples: int = Field(1000, ge=100, description="Bootstrap resamples for every confidence interval.")


class InterventionParams(Strict):
    conditions: list[Condition] = Field(
        ["direct", "zero_shot_cot", "few_shot_cot"], min_length=1,
        description="Prompt conditions to intervene under (conflict_hop1 / conflict_hop2 optional).")
    enhance_factor: float = Field(2.0, gt=1, description="Enhance: multiply the KN activations by this factor.")
    suppress_factor: float = Field(0.0, ge=0, lt=1, description="Suppress: multiply the KN activations by this factor.")
    random_seeds: int = Field(5, ge=0, description="Random-neuron controls (layer-matched) per intervention; 0 for none.")
    position_policy: Literal["last_prompt", "all_generated", "all"] = Field(
        "last_prompt", description="Positions scaled: the last prompt token, every position predicting a generated "
        "token, or every position of prompt and generation.")
    max_items: int | None = Field(
        None, ge=1, description="Intervene on at most this many items (a deterministic sample by seed); null: every item.")
    causal_random_seeds: int = Field(
        1, ge=0, description="Layer-matched random-neuron controls per item, condition and hop in the per-item causal "
        "effects (control seeds 0 .. n-1, the same neurons as the interventions' controls of those seeds).")
    shards: int = Field(2, ge=1, description="Intervention shards (jobs); items are assigned by a hash of their case id.")


class ValidationParams(Strict):
    world_seeds: int = Field(
        3, ge=2,
        description="Worlds that `snakemake validate_worlds` builds and measures side by side (seeds seed, seed + 1, "
        "..., seed + world_seeds - 1), to test whether each scoreboard finding replicates across worlds; a finding is "
        "robust only when every seed agrees in sign. Not part of the default run.",
    )
    subject_site_items: int = Field(
        240, ge=0,
        description="Items (every pathway-revealing item, then a seeded sample of the others) whose hop-1 facts are "
        "attributed once more at the subject's last token of the single-hop prompts, for the scoreboard's "
        "subject-site variant (results/recall/{model}/subject_site.json); 0 turns the variant off.",
    )


class Params(Strict):
    seed: int = Field(0, description="Seed of everything random (world, training).")
    dataset: DatasetParams = DatasetParams()
    world: WorldParams = WorldParams()
    world_model: WorldModelParams = WorldModelParams()
    models: dict[str, ModelParams] = Field(
        default_factory=lambda: {"world": ModelParams(path="world")},
        min_length=1,
        description="Models to study, by name (names become file names).",
    )
    prompts: dict[Condition, str] = Field(
        default_factory=lambda: dict(DEFAULT_TEMPLATES),
        description="Prompt template per condition; {question} marks the question, {exemplars} the few-shot "
        "exemplars, {context} the conflicting context.",
    )
    answer: AnswerParams = AnswerParams()
    attribution: AttributionParams = AttributionParams()
    kns: KnsParams = KnsParams()
    recall: RecallParams = RecallParams()
    interventions: InterventionParams = InterventionParams()
    validation: ValidationParams = ValidationParams()

    @model_validator(mode="after")
    def consistent(self) -> "Params":
        for name in self.models:
            if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"models: name '{name}' may only use letters, digits, '-', '_' and '.'")
        if self.kns.coarse_threshold < self.attribution.store_threshold and not self.attribution.full_maps:
            raise ValueError("kns.coarse_threshold must be >= attribution.store_threshold (or set attribution.full_maps)")
        if "direct" not in self.prompts:
            raise ValueError("prompts: the 'direct' template is required (single-hop prompts use it)")
        for condition, template in self.prompts.items():
            needed = ["{question}"] + (["{exemplars}"] if condition == "few_shot_cot" else []) + (
                ["{context}"] if condition.startswith("conflict") else [])
            for placeholder in needed:
                if placeholder not in template:
                    raise ValueError(f"prompts.{condition}: the template must contain {placeholder}")
        for condition in self.answer.conditions:
            if condition not in self.prompts:
                raise ValueError(f"prompts: no template for condition '{condition}'")
        for condition in self.interventions.conditions:
            if condition not in self.prompts:
                raise ValueError(f"prompts: no template for condition '{condition}' (interventions.conditions)")
        return self


def _location(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))


def parse_params(data: Any, source: str = "params.yaml", model: type[BaseModel] = Params) -> BaseModel:
    """Validate `data`; any problem becomes one line naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _location(error)
        if error["type"] == "extra_forbidden":
            message = f"unknown key '{where}'"
        else:
            got = error.get("input")
            shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            text = error["msg"].removeprefix("Value error, ")
            message = f"key '{where}': {text}{shown}" if where else text
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise KnrecallError(f"{source}: {message}{more}") from None


def load_params(path: str | Path) -> Params:
    path = Path(path)
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KnrecallError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(data, str(path))


def json_schema() -> dict[str, Any]:
    schema = Params.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = "knrecall science parameters (generated from knrecall.config.Params; do not edit)."
    return schema


def schema_yaml() -> str:
    header = "# Generated by `python -m knrecall schema --out schemas/params.schema.yaml`; do not edit.\n"
    return header + yaml.safe_dump(json_schema(), sort_keys=False, width=120)


def validate_against_schema(data: Any, schema_path: str | Path, source: str = "params.yaml") -> None:
    """Check `data` against the generated JSON Schema file (what the Snakefile does); one line per problem."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is None:
        return
    where = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = ".".join(filter(None, [where, extra[0] if extra else ""]))
        raise KnrecallError(f"{source}: unknown key '{key}'")
    raise KnrecallError(f"{source}: key '{where}': {error.message}")
