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
import re
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


def rule_payload(text: str, what: str, keys: tuple[str, ...]) -> dict:
    """The `--params` JSON object of a rule, with its required blocks."""
    payload = parse_json(text, what)
    if not isinstance(payload, dict) or not set(keys) <= payload.keys():
        wanted = ", ".join(f"'{key}'" for key in keys)
        raise KnrecallError(f"--params for {what}: expected a JSON object with {wanted}")
    return payload


def load_rule_model(payload: dict, args: argparse.Namespace):
    """The model of a rule's `--params` ('model' block; `--model-path` overrides the path): (spec, model, tokenizer,
    wrap), `wrap` turning a question prompt into the model's prompt (its chat prompt with `chat_template`)."""
    from knrecall.config import ModelParams, parse_params
    from knrecall.models.chat import prompt_wrapper
    from knrecall.models.load import ModelSpec, load_model

    params = parse_params(payload["model"], "--params (model)", ModelParams)
    spec = ModelSpec(args.model_path or params.path, params.revision, params.dtype, params.trust_remote_code,
                     params.allow_pickle)
    model, tokenizer = load_model(spec, args.device)
    wrap = prompt_wrapper(tokenizer, params.chat_template, args.model_name or params.path)
    return spec, model, tokenizer, wrap


def model_meta(args: argparse.Namespace, spec, payload: dict) -> dict:
    """The `model` block of an output's metadata."""
    return {"name": args.model_name, "path": spec.path, "revision": spec.revision, "dtype": spec.dtype,
            "chat_template": bool(payload["model"].get("chat_template", False))}


def json_params(text: str, model, what: str):
    """`--params` JSON validated against one block of the typed parameter model."""
    from knrecall.config import parse_params

    return parse_params(parse_json(text, what), f"--params ({what})", model)


def rule_neuron(payload: dict, what: str, kns_path: str | None = None) -> str:
    """The neuron definition (`attribution.neuron`) of a rule's `--params` ('attribution' block, optional: the
    default `ffn_input`), checked against the one the KN file was selected under, if given."""
    from knrecall.config import AttributionParams, parse_params
    from knrecall.io import read_metadata

    neuron = parse_params(payload.get("attribution", {}), f"--params ({what}: attribution)", AttributionParams).neuron
    if kns_path is not None:
        try:
            meta = read_metadata(kns_path)
        except Exception:  # missing or unreadable: reading the KN file itself reports it
            meta = {}
        recorded = meta.get("thresholds", {}).get("neuron", "ffn_input")
        if recorded != neuron:
            raise KnrecallError(f"{kns_path}: the KNs were selected with attribution.neuron = {recorded}, but this "
                                f"run reads neurons as {neuron}; attribute and select KNs again")
    return neuron


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- world generate
def cmd_world_generate(args: argparse.Namespace) -> None:
    from knrecall.config import WorldParams
    from knrecall.data.conditions import DEFAULT_TEMPLATES
    from knrecall.io import write_json, write_jsonl
    from knrecall.world.generate import WorldSize, generate_world

    world = json_params(args.params, WorldParams, "world")
    templates = {**DEFAULT_TEMPLATES, **(parse_json(args.templates, "templates") if args.templates else {})}
    size = WorldSize(world.people, world.cities, world.countries, world.companies, world.languages, world.currencies)
    generated = generate_world(args.seed, size, world.heldout_subject_fraction, world.heldout_bridge_fraction,
                               world.shortcut_fraction, templates["direct"], cot_fraction=world.cot_fraction,
                               context_fraction=world.context_fraction, pathway_fraction=world.pathway_fraction,
                               templates=templates)
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


def read_json_file(path: Path, kind: type, what: str):
    """A JSON file holding a `kind` (list or dict); a missing, unreadable or other file is one line naming it."""
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KnrecallError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, kind):
        raise KnrecallError(f"{path}: expected {what}")
    return data


def read_json_list(path: Path) -> list:
    return read_json_file(path, list, "a JSON list of items")


def cmd_world_train(args: argparse.Namespace) -> None:
    from knrecall.config import WorldModelParams
    from knrecall.data.conditions import DEFAULT_TEMPLATES, EXEMPLAR_TEMPLATE
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


# ----------------------------------------------------------------------------------------------- world metrics
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


# ------------------------------------------------------------------------------------------------- data import
def cmd_data_import(args: argparse.Namespace) -> None:
    from knrecall.data.importers import run_import

    count = run_import(Path(args.input), args.format, Path(args.out))
    logging.info("imported %d items from %s -> %s", count, args.input, args.out)


# ------------------------------------------------------------------------------------------------------ answer
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


# --------------------------------------------------------------------------------------------------- attribute
def cmd_attribute(args: argparse.Namespace) -> None:
    from knrecall.attribution.run import AttributionSettings, attribute_shard
    from knrecall.config import AttributionParams, parse_params
    from knrecall.data.items import read_items
    from knrecall.io import provenance, write_parquet
    from knrecall.skips import metadata as skip_metadata

    payload = rule_payload(args.params, "attribute", ("attribution", "prompts", "model"))
    params = parse_params(payload["attribution"], "--params (attribution)", AttributionParams)
    if not 0 <= args.shard < params.shards:
        raise KnrecallError(f"--shard {args.shard} is outside 0..{params.shards - 1} (attribution.shards = {params.shards})")
    set_threads(args.threads)
    items = read_items(args.items)
    spec, model, tokenizer, wrap = load_rule_model(payload, args)
    settings = AttributionSettings(params.steps, params.rule, params.target, params.store_threshold, params.full_maps,
                                   params.neuron)
    skipped: list = []
    neurons, layers = attribute_shard(items, model, tokenizer, payload["prompts"], settings, args.shard, params.shards,
                                      args.max_rows, wrap=wrap, skipped=skipped)
    meta = provenance(payload, model=model_meta(args, spec, payload), shard=args.shard, shards=params.shards,
                      device=args.device, **skip_metadata(skipped))
    write_parquet(layers, args.layers_out, meta)
    write_parquet(neurons, args.out, meta)
    logging.info("attributed %d prompts -> %s", layers.num_rows // max(1, len(set(layers["layer"].to_pylist()))), args.out)


def cmd_select_kns(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.attribution.kns import Selection, select_kns
    from knrecall.attribution.summary import attribution_summary
    from knrecall.config import AttributionParams, KnsParams, parse_params
    from knrecall.io import provenance, read_metadata, read_parquet, write_json, write_parquet
    from knrecall.skips import merge_counts

    payload = rule_payload(args.params, "select-kns", ("attribution", "kns"))
    attribution = parse_params(payload["attribution"], "--params (attribution)", AttributionParams)
    params = parse_params(payload["kns"], "--params (kns)", KnsParams)
    if len(args.neurons) != len(args.layers):
        raise KnrecallError("select-kns: give one --layers file per --neurons file")
    neurons = pl.concat([pl.from_arrow(read_parquet(path)) for path in args.neurons])
    for path in args.neurons:  # the shards must have been attributed under the same neuron definition
        recorded = read_metadata(path).get("params", {}).get("attribution", {}).get("neuron", "ffn_input")
        if recorded != attribution.neuron:
            raise KnrecallError(f"{path}: attributed with attribution.neuron = {recorded}, but KNs are selected "
                                f"for {attribution.neuron}")
    layers = pl.concat([pl.from_arrow(read_parquet(path)) for path in args.layers])
    prompts = layers.group_by("fact_id", "paraphrase").agg(pl.col("max_attribution").max())
    selection = Selection(params.coarse_threshold, params.refine_fraction, params.refine_mode == "adaptive",
                          tuple(params.adaptive_band))
    kns, info = select_kns(neurons, prompts, selection, attribution.store_threshold, attribution.neuron)
    summary = attribution_summary(layers, kns, info, args.model_name)
    summary["skipped"] = merge_counts(*(read_metadata(path).get("skipped_counts") for path in args.layers))
    write_parquet(kns.to_arrow(), args.out, provenance(payload, thresholds=info,
                                                        model={"name": args.model_name}))
    write_json(summary, args.summary)
    logging.info("KNs: %d facts, mean %.2f refined KNs per fact (p = %.2f) -> %s", info["n_facts"],
                 info["mean_refined_kns_per_fact"], info["refine_fraction"], args.out)


def cmd_merge_metrics(args: argparse.Namespace) -> None:
    from knrecall.io import write_json

    merged: dict = {}
    for path in args.inputs:  # several files of one model (its summary, its scoreboard) are merged key by key
        data = json.loads(Path(path).read_text())
        merged.setdefault(data["model"], {}).update(data)
    write_json({"models": merged}, args.out)


def cmd_attribute_prompt(args: argparse.Namespace) -> None:
    import pyarrow as pa

    from knrecall.attribution.engine import attribute_prompt
    from knrecall.attribution.reference import attribute_prompt_naive
    from knrecall.io import provenance, write_parquet
    from knrecall.models.adapters import adapter_for
    from knrecall.models.load import ModelSpec, load_model
    from knrecall.targets import teacher_forced_contexts

    set_threads(args.threads)
    spec = ModelSpec(args.model, args.revision, args.dtype, args.trust_remote_code, args.allow_pickle)
    model, tokenizer = load_model(spec, args.device)
    prompt_ids, answer_ids = teacher_forced_contexts(tokenizer, args.prompt, args.answer)
    adapter = adapter_for(model, args.neuron)
    options = dict(steps=args.steps, rule=args.rule, target=args.target)
    if args.engine == "fast":
        ig = attribute_prompt(model, adapter, prompt_ids, answer_ids, max_rows=args.max_rows, **options)
    else:
        ig = attribute_prompt_naive(model, adapter, prompt_ids, answer_ids, **options)
    n_layers, width = ig.attributions.shape
    table = pa.table(
        {
            "layer": pa.array([layer for layer in range(n_layers) for _ in range(width)], pa.int16()),
            "neuron": pa.array(list(range(width)) * n_layers, pa.int32()),
            "attribution": pa.array(ig.attributions.flatten().tolist(), pa.float32()),
            "activation": pa.array(ig.activations.flatten().tolist(), pa.float32()),
        }
    )
    completeness = [
        {"layer": layer, "attribution_sum": float(ig.attribution_sums[layer]), "target_delta": float(ig.target_deltas[layer]),
         "relative_error": float(ig.completeness_error[layer])}
        for layer in range(n_layers)
    ]
    meta = provenance(options, model={"path": spec.path, "revision": spec.revision, "dtype": spec.dtype},
                      prompt=args.prompt, answer=args.answer, engine=args.engine, neuron=args.neuron,
                      answer_tokens=answer_ids,
                      base_target=ig.base_target, completeness=completeness, device=args.device)
    write_parquet(table, args.out, meta)
    top = torch_topk(ig.attributions, 5)
    print(f"{args.engine} IG of {args.answer!r} ({len(answer_ids)} token(s)); f = {ig.base_target:.4g}; "
          f"max completeness error {float(ig.completeness_error.max()):.2e}")
    for layer, neuron, value in top:
        print(f"  layer {layer:3d} neuron {neuron:6d}  attribution {value:.4g}")


def torch_topk(attributions, k: int) -> list[tuple[int, int, float]]:
    values, flat = attributions.flatten().topk(min(k, attributions.numel()))
    width = attributions.shape[1]
    return [(int(i) // width, int(i) % width, float(v)) for v, i in zip(values, flat)]


# ------------------------------------------------------------------------------------------------------ recall
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


# ----------------------------------------------------------------------------------------------- interventions
def cmd_causal(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.attribution.kns import refined_sets
    from knrecall.config import InterventionParams, parse_params
    from knrecall.data.items import read_items
    from knrecall.interventions.causal import causal_effects
    from knrecall.io import provenance, read_parquet, write_parquet
    from knrecall.skips import metadata as skip_metadata

    payload = rule_payload(args.params, "causal", ("interventions", "model", "seed"))
    params = parse_params(payload["interventions"], "--params (interventions)", InterventionParams)
    neuron = rule_neuron(payload, "causal", args.kns)
    set_threads(args.threads)
    items = read_items(args.items)
    predictions = pl.from_arrow(read_parquet(args.predictions))
    refined = refined_sets(pl.from_arrow(read_parquet(args.kns)))
    spec, model, tokenizer, _ = load_rule_model(payload, args)  # the predictions hold the model's own prompts
    table, skipped = causal_effects(items, predictions, refined, model, tokenizer, params.suppress_factor,
                                    params.causal_random_seeds, args.model_name, args.batch_size, neuron)
    meta = provenance(payload, model=model_meta(args, spec, payload), device=args.device, **skip_metadata(skipped))
    write_parquet(table.to_arrow(), args.out, meta)
    logging.info("causal effects: %d rows -> %s (skipped: %s)", table.height, args.out,
                 skip_metadata(skipped)["skipped_counts"]["by_reason"] or "none")


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
    if args.subject_site:  # the subject-site variant's rows (knrecall.validation.subject_site), beside the others
        from knrecall.validation.scoreboard import pathway_answers
        from knrecall.validation.subject_site import subject_site_rows

        site = read_json_file(Path(args.subject_site[0]), dict, "subject-site summary")
        if site.get("items"):
            scores, nulls, causal = (pl.from_arrow(read_parquet(path)) for path in args.subject_site[1:])
            site.update(subject_site_rows(scores, nulls, causal, site["case_ids"], frames["items"],
                                          pathway_answers(frames["items"], frames["predictions"]), frames["scores"],
                                          frames["null_scores"], frames["causal"], params.bootstrap_resamples,
                                          payload["seed"]))
        board["subject_site"] = {key: value for key, value in site.items() if key != "case_ids"}
    write_json({"model": args.model_name, "scoreboard": board}, args.out)
    logging.info("scoreboard: %d rows; the rule chooses %s -> %s", len(board["rows"]), board["rule"]["chosen"],
                 args.out)


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
    if validation.subject_site_items == 0:  # the variant is off: empty outputs, no model loaded
        for path in outputs:
            write_parquet(pl.DataFrame(schema={"case_id": pl.String}).to_arrow(), path, provenance(payload))
        write_json({"model": args.model_name, "items": 0, "case_ids": []}, args.out)
        logging.info("subject-site KNs: off (validation.subject_site_items = 0)")
        return
    set_threads(args.threads)
    predictions = pl.from_arrow(read_parquet(args.predictions))
    steps = pl.from_arrow(read_parquet(args.steps))
    spec, model, tokenizer, wrap = load_rule_model(payload, args)
    from knrecall.validation.subject_site import subject_site

    settings = AttributionSettings(attribution.steps, attribution.rule, attribution.target,
                                   attribution.store_threshold, attribution.full_maps, attribution.neuron)
    selection = Selection(kns.coarse_threshold, kns.refine_fraction, kns.refine_mode == "adaptive",
                          tuple(kns.adaptive_band))
    summary, *tables, skipped = subject_site(
        read_items(args.items), predictions, steps, model, tokenizer, payload["prompts"], settings, selection,
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


def cmd_intervene(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.attribution.kns import refined_sets
    from knrecall.config import AnswerParams, InterventionParams, parse_params
    from knrecall.data.items import read_items
    from knrecall.interventions.run import Settings, run_shard
    from knrecall.io import provenance, read_parquet, write_parquet
    from knrecall.skips import metadata as skip_metadata

    payload = rule_payload(args.params, "intervene", ("interventions", "answer", "prompts", "model", "seed"))
    params = parse_params(payload["interventions"], "--params (interventions)", InterventionParams)
    answer = parse_params(payload["answer"], "--params (answer)", AnswerParams)
    neuron = rule_neuron(payload, "intervene", args.kns)
    if not 0 <= args.shard < params.shards:
        raise KnrecallError(f"--shard {args.shard} is outside 0..{params.shards - 1} "
                            f"(interventions.shards = {params.shards})")
    set_threads(args.threads)
    items = read_items(args.items)
    refined = refined_sets(pl.from_arrow(read_parquet(args.kns)))
    spec, model, tokenizer, wrap = load_rule_model(payload, args)
    settings = Settings(tuple(params.conditions), params.enhance_factor, params.suppress_factor, params.random_seeds,
                        params.position_policy, answer.max_new_tokens, answer.cot_max_new_tokens,
                        answer.few_shot_exemplars, payload["seed"], params.max_items, neuron)
    skipped: list = []
    table = run_shard(items, refined, model, tokenizer, payload["prompts"], settings, args.shard, params.shards,
                      args.batch_size, args.model_name, wrap=wrap, skipped=skipped)
    meta = provenance(payload, model=model_meta(args, spec, payload), shard=args.shard, shards=params.shards,
                      device=args.device, **skip_metadata(skipped))
    write_parquet(table, args.out, meta)
    logging.info("intervened: %d rows -> %s", table.num_rows, args.out)


def cmd_intervention_summary(args: argparse.Namespace) -> None:
    import polars as pl

    from knrecall.config import RecallParams, parse_params
    from knrecall.interventions.analysis import analyse_interventions
    from knrecall.io import read_metadata, read_parquet, write_json
    from knrecall.skips import merge_counts

    payload = rule_payload(args.params, "intervention-summary", ("recall", "seed"))
    params = parse_params(payload["recall"], "--params (recall)", RecallParams)
    rows = pl.concat([pl.from_arrow(read_parquet(path)) for path in args.shards])
    n_items = pl.from_arrow(read_parquet(args.items)).height
    skipped = merge_counts(*(read_metadata(path).get("skipped_counts") for path in args.shards))
    metrics = analyse_interventions(rows, n_items, params.bootstrap_resamples, payload["seed"], skipped=skipped)
    write_json({"model": args.model_name, **metrics}, args.out)
    logging.info("intervention summary of %d rows -> %s", rows.height, args.out)


def cmd_intervene_prompt(args: argparse.Namespace) -> None:
    from knrecall.answer import extract_span, stop_token_ids
    from knrecall.interventions.generate import greedy_generate
    from knrecall.interventions.run import COT_ANSWER_CONTEXT, answer_step
    from knrecall.models.adapters import adapter_for
    from knrecall.models.load import ModelSpec, load_model
    from knrecall.recall.steps import prompt_input_ids
    from knrecall.targets import answer_token_ids

    neurons: dict[int, list[int]] = {}
    for text in args.neuron:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        if not match:
            raise KnrecallError(f"--neuron '{text}': expected LAYER:INDEX, e.g. 3:117")
        neurons.setdefault(int(match[1]), []).append(int(match[2]))
    set_threads(args.threads)
    model, tokenizer = load_model(ModelSpec(args.model, args.revision, args.dtype, args.trust_remote_code,
                                            args.allow_pickle), args.device)
    prompt_ids = prompt_input_ids(tokenizer, args.prompt)
    gold = answer_token_ids(tokenizer, COT_ANSWER_CONTEXT if args.cot else args.prompt, args.gold)[0]
    stops = stop_token_ids(tokenizer, args.cot)
    limit = args.max_new_tokens
    adapter = adapter_for(model, args.neuron_definition)
    for label, factor in (("without", 1.0), ("with", args.factor)):
        result = greedy_generate(model, [prompt_ids], limit, stops, neurons=[neurons], factor=factor,
                                 policy=args.policy, gold_ids=[gold], adapter=adapter,
                                 pad_id=tokenizer.pad_token_id)[0]
        generation = tokenizer.decode(result.generated_ids, skip_special_tokens=True)
        span = extract_span(generation, args.cot)
        prob = result.gold_probs[answer_step(tokenizer, result.generated_ids, generation, span, args.cot)]
        what = "" if factor == 1.0 else f" (x{factor:g} on {sum(map(len, neurons.values()))} neurons, {args.policy})"
        print(f"{label} intervention{what}: answer {span!r}, P(gold first token) = {prob:.4f}; generation {generation!r}")


def cmd_report(args: argparse.Namespace) -> None:
    from knrecall.report.build import build_report

    params = parse_json(args.params, "report")
    if not isinstance(params, dict):
        raise KnrecallError("--params for report: expected a JSON object (the full parameters)")
    path = build_report(Path(args.results), Path(args.out_dir), args.models, params, args.dataset)
    logging.info("report -> %s", path)


def cmd_estimate(args: argparse.Namespace) -> None:
    from knrecall.attribution.cost import PRESETS, estimate, shape_from_config

    rows = []
    for name in args.models:
        if name in PRESETS:
            config = PRESETS[name]
        else:
            path = Path(name).expanduser() / "config.json"
            if not path.exists():
                raise KnrecallError(f"--models: '{name}' is neither a preset ({', '.join(PRESETS)}) nor a folder "
                                    "with a config.json")
            try:
                config = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise KnrecallError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(config, dict):
                raise KnrecallError(f"{path}: expected a JSON object")
        try:
            shape = shape_from_config(config)
        except KnrecallError as exc:
            raise KnrecallError(f"--models: '{name}': {exc}") from None
        result = estimate(shape, args.prompts, args.prompt_len, args.answer_len, args.steps,
                          args.max_rows, args.dtype, args.tflops)
        rows.append(f"| {name} | {result['parameters_billion']:.1f} | {result['tflop_per_prompt']:.2f} | "
                    f"{result['seconds_per_prompt']:.3f} | {result['hours']:.1f} | {result['memory_gib']:.1f} |")
    print(f"attribution of {args.prompts} prompts ({args.prompt_len} prompt + {args.answer_len} answer tokens, "
          f"{args.steps} steps, max_rows {args.max_rows}, {args.dtype}) at an effective {args.tflops:g} TFLOP/s:\n")
    print("| model | parameters (B) | TFLOP per prompt | s per prompt | hours | memory bound (GiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


def cmd_tables(args: argparse.Namespace) -> None:
    from knrecall.tables import intervention_table, recall_table, validation_table

    printed = False
    for name, render in (("recall.json", recall_table), ("recall.json", validation_table),
                         ("interventions.json", intervention_table)):
        path = Path(args.metrics) / name
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KnrecallError(f"{path}: not valid JSON ({exc})") from None
        table = render(data)
        if table:
            print(f"{path} ({render.__name__.replace('_', ' ')}):\n\n{table}\n")
            printed = True
    if not printed:
        raise KnrecallError(f"{args.metrics}: neither recall.json nor interventions.json is there (run the workflow first)")


def cmd_timings(args: argparse.Namespace) -> None:
    from knrecall.timings import job_records, timing_table

    print(f"per-rule wall times ({args.metadata}):\n\n{timing_table(job_records(args.metadata))}\n")


# ------------------------------------------------------------------------------------------------ validate-worlds
def read_metrics_json(path: str) -> dict:
    """A metrics JSON file (a JSON object); a missing or unreadable file is one line naming it."""
    return read_json_file(Path(path), dict, "a JSON object")


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
def model_run_arguments(p: argparse.ArgumentParser, batch_size: int) -> None:
    """The arguments of a subcommand that runs a model over batches of sequences."""
    p.add_argument("--model-path", help="override the model path (the workflow passes the trained world model)")
    p.add_argument("--model-name", default="")
    p.add_argument("--batch-size", type=int, default=batch_size, help="sequences per forward (runtime knob)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)


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

    data = sub.add_parser("data", help="datasets: import TFRKN / MQuAKE / JSON Lines into items.parquet")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    p = data_sub.add_parser("import", help="import a dataset file into the items table")
    p.add_argument("--input", required=True, help="dataset file (.json or .jsonl)")
    p.add_argument("--format", default="auto", choices=["auto", "tfrkn", "mquake", "jsonl"])
    p.add_argument("--out", required=True, help="items.parquet")
    p.set_defaults(func=cmd_data_import)

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

    p = sub.add_parser("attribute", help="per-layer IG of every single-hop prompt of one shard's facts")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--params", required=True, help="JSON with 'attribution', 'prompts' and 'model'")
    p.add_argument("--model-path", help="override the model path (the workflow passes the trained world model)")
    p.add_argument("--model-name", default="", help="the model's name in params.yaml (recorded in metadata)")
    p.add_argument("--shard", type=int, default=0, help="this shard's index, 0 .. attribution.shards-1")
    p.add_argument("--max-rows", type=int, default=256, help="IG rows per batch (memory knob)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (runtime knob)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (runtime knob)")
    p.add_argument("--out", required=True, help="neurons Parquet (thresholded coordinates)")
    p.add_argument("--layers-out", required=True, help="per-prompt, per-layer summary Parquet (completeness)")
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("select-kns", help="coarse KNs per prompt and refined KNs per fact from attribution shards")
    p.add_argument("--neurons", nargs="+", required=True, help="the shards' neurons files")
    p.add_argument("--layers", nargs="+", required=True, help="the shards' layers files, same order")
    p.add_argument("--params", required=True, help="JSON with the 'attribution' and 'kns' blocks of params.yaml")
    p.add_argument("--model-name", default="")
    p.add_argument("--out", required=True, help="kns.parquet")
    p.add_argument("--summary", required=True, help="per-model attribution summary (JSON)")
    p.set_defaults(func=cmd_select_kns)

    p = sub.add_parser("merge-metrics", help="merge per-model summaries into one metrics JSON keyed by model")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge_metrics)

    p = sub.add_parser("attribute-prompt", help="the full IG map of one prompt and answer, for a single fact")
    p.add_argument("--model", required=True, help="hub id or local directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--answer", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rule", default="gauss_legendre", choices=["gauss_legendre", "midpoint", "left", "right", "linspace"])
    p.add_argument("--target", default="prob", choices=["prob", "logprob"])
    p.add_argument("--engine", default="fast", choices=["fast", "naive"])
    p.add_argument("--neuron", default="ffn_input", choices=["ffn_input", "pre_activation"],
                   help="neuron definition (attribution.neuron): the FFN output projection's input, or the first "
                        "projection's output before the activation function")
    p.add_argument("--revision")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code (if you trust it)")
    p.add_argument("--allow-pickle", action="store_true", help="load pickled weights (if you trust the files)")
    p.add_argument("--max-rows", type=int, default=256, help="IG rows per batch (fast engine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="Parquet with layer, neuron, attribution, activation")
    p.set_defaults(func=cmd_attribute_prompt)

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

    p = sub.add_parser("causal", help="per-item causal effects: gold probability with each hop's KNs suppressed")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--predictions", required=True, help="the model's predictions.parquet (its own chains)")
    p.add_argument("--kns", required=True, help="the model's kns.parquet")
    p.add_argument("--params", required=True, help="JSON with 'interventions', 'model', 'seed' and "
                   "optionally 'attribution' ({'neuron': ...}, default ffn_input)")
    model_run_arguments(p, batch_size=64)
    p.add_argument("--out", required=True, help="output: causal.parquet")
    p.set_defaults(func=cmd_causal)

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
    p.add_argument("--out", required=True, help="output: scoreboard.json")
    p.set_defaults(func=cmd_scoreboard)

    p = sub.add_parser("subject-site", help="hop-1 KNs attributed at the subject: their scores and causal effects")
    for flag, what in (("--items", "items.parquet"), ("--predictions", "the model's predictions parquet"),
                       ("--steps", "the recall phase's steps.parquet")):
        p.add_argument(flag, required=True, help=f"input: {what}")
    p.add_argument("--params", required=True, help="JSON: attribution, kns, recall, interventions, validation, prompts, "
                   "model, seed")
    p.add_argument("--max-rows", type=int, default=256, help="IG rows per forward (each a copy of the suffix)")
    model_run_arguments(p, 16)
    p.add_argument("--out", required=True, help="output: subject_site.json (the summary)")
    for flag, what in (("--kns-out", "the subject-site KN table"), ("--scores-out", "their item scores"),
                       ("--null-scores-out", "their null scores"), ("--causal-out", "their causal effects")):
        p.add_argument(flag, required=True, help=f"output: {what} (parquet)")
    p.set_defaults(func=cmd_subject_site)

    p = sub.add_parser("intervene", help="scale KNs (and random controls) during generation, one shard of items")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--kns", required=True, help="the model's kns.parquet")
    p.add_argument("--params", required=True,
                   help="JSON with 'interventions', 'answer', 'prompts', 'model' (one models entry), 'seed' "
                        "and optionally 'attribution' ({'neuron': ...}, default ffn_input)")
    p.add_argument("--model-path", help="override the model path (the workflow passes the trained world model)")
    p.add_argument("--model-name", default="")
    p.add_argument("--shard", type=int, default=0, help="this shard's index, 0 .. interventions.shards-1")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generation batch (runtime knob)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="the shard's interventions Parquet")
    p.set_defaults(func=cmd_intervene)

    p = sub.add_parser("intervention-summary", help="accuracy and gold probability changes with CIs, KN vs random")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--shards", nargs="+", required=True, help="the model's interventions shard files")
    p.add_argument("--params", required=True, help="JSON with 'recall' (bootstrap_resamples) and 'seed'")
    p.add_argument("--model-name", default="")
    p.add_argument("--out", required=True, help="the model's intervention metrics (JSON)")
    p.set_defaults(func=cmd_intervention_summary)

    p = sub.add_parser("intervene-prompt", help="one prompt's answer and gold probability with and without scaling")
    p.add_argument("--model", required=True, help="hub id or local directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--gold", required=True, help="the gold answer (its first token's probability is reported)")
    p.add_argument("--neuron", action="append", default=[], required=True, metavar="LAYER:INDEX",
                   help="a neuron to scale; repeat for several")
    p.add_argument("--factor", type=float, default=0.0, help="multiply the neurons' activations by this (default 0)")
    p.add_argument("--neuron-definition", default="ffn_input", choices=["ffn_input", "pre_activation"],
                   help="what a neuron is (attribution.neuron): the FFN output projection's input, or the first "
                        "projection's output before the activation function")
    p.add_argument("--policy", default="last_prompt", choices=["last_prompt", "all_generated", "all"])
    p.add_argument("--cot", action="store_true", help="a chain-of-thought prompt: the answer follows 'So the answer is'")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--revision")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code (if you trust it)")
    p.add_argument("--allow-pickle", action="store_true", help="load pickled weights (if you trust the files)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_intervene_prompt)

    p = sub.add_parser("report", help="results/report/index.html with figures and CSV series, from the outputs")
    p.add_argument("--results", default="results", help="the workflow's results folder")
    p.add_argument("--models", nargs="+", required=True, help="model names (as in params.yaml)")
    p.add_argument("--params", required=True, help="JSON of all parameters (shown, and fingerprinted)")
    p.add_argument("--dataset", default="world", help="a description of the dataset (shown in the manifest)")
    p.add_argument("--out-dir", required=True, help="the report folder (index.html, figures/, data/)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("estimate", help="attribution time and memory from the engine's cost model (no model loaded)")
    p.add_argument("--models", nargs="+", default=["llama2-7b", "llama3-8b", "mistral-7b"],
                   help="presets (llama2-7b, llama3-8b, mistral-7b) or local checkpoint folders")
    p.add_argument("--prompts", type=int, default=10000, help="single-hop prompts to attribute")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--answer-len", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-rows", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--tflops", type=float, default=100.0,
                   help="effective matrix-multiply rate of your device (TFLOP/s); benchmarks/ measures it")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("tables", help="print the recall (Table-4 layout), validation and intervention tables")
    p.add_argument("--metrics", default="results/metrics", help="the folder with recall.json / interventions.json")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("timings", help="per-rule wall times of the last run, from Snakemake's job records")
    p.add_argument("--metadata", default=".snakemake/metadata", help="Snakemake's metadata folder")
    p.set_defaults(func=cmd_timings)

    p = sub.add_parser("validate-worlds", help="replication across worlds: every scoreboard figure per seed and "
                       "across seeds (mean, spread, sign agreement, robust)")
    p.add_argument("--seeds", nargs="*", type=int, default=[], required=True, help="the world seeds, in file order")
    p.add_argument("--recall", nargs="*", default=[], required=True, help="each seed's metrics/recall.json")
    p.add_argument("--world", nargs="*", default=[], help="each seed's metrics/world.json (pathway shares)")
    p.add_argument("--model", help="the model's name in recall.json (default: its first model)")
    p.add_argument("--out", required=True, help="the aggregate (JSON)")
    p.add_argument("--html", help="the report section (a standalone HTML page)")
    p.set_defaults(func=cmd_validate_worlds)

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
