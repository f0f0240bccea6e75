"""The attribution phase's subcommands: `attribute`, `select-kns`, `attribute-prompt`, `estimate`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from knrecall.cliutil import load_rule_model, model_meta, rule_payload, set_threads
from knrecall.errors import KnrecallError


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


def add_attribute(sub: argparse._SubParsersAction) -> None:
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


def add_select_kns(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select-kns", help="coarse KNs per prompt and refined KNs per fact from attribution shards")
    p.add_argument("--neurons", nargs="+", required=True, help="the shards' neurons files")
    p.add_argument("--layers", nargs="+", required=True, help="the shards' layers files, same order")
    p.add_argument("--params", required=True, help="JSON with the 'attribution' and 'kns' blocks of params.yaml")
    p.add_argument("--model-name", default="")
    p.add_argument("--out", required=True, help="kns.parquet")
    p.add_argument("--summary", required=True, help="per-model attribution summary (JSON)")
    p.set_defaults(func=cmd_select_kns)


def cmd_attribute_prompt(args: argparse.Namespace) -> None:
    from knrecall.attribution.prompt import attribute
    from knrecall.io import provenance, write_parquet
    from knrecall.models.load import load
    from knrecall.targets import answer_token_ids

    set_threads(args.threads)
    model, tokenizer = load(args.model, revision=args.revision, dtype=args.dtype,
                            trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle, device=args.device)
    options = dict(steps=args.steps, rule=args.rule, target=args.target)
    ig = attribute(model, tokenizer, args.prompt, args.answer, neuron=args.neuron, engine=args.engine,
                   max_rows=args.max_rows, **options)
    completeness = [
        {"layer": layer, "attribution_sum": float(ig.attribution_sums[layer]), "target_delta": float(ig.target_deltas[layer]),
         "relative_error": float(ig.completeness_error[layer])}
        for layer in range(ig.attributions.shape[0])
    ]
    meta = provenance(options, model={"path": args.model, "revision": args.revision, "dtype": args.dtype},
                      prompt=args.prompt, answer=args.answer, engine=args.engine, neuron=args.neuron,
                      answer_tokens=answer_token_ids(tokenizer, args.prompt, args.answer),
                      base_target=ig.base_target, completeness=completeness, device=args.device)
    write_parquet(ig.table(), args.out, meta)
    print(f"{args.engine} IG of {args.answer!r} ({ig.n_answer_tokens} token(s)); f = {ig.base_target:.4g}; "
          f"max completeness error {float(ig.completeness_error.max()):.2e}")
    for layer, neuron, value in ig.top(5):
        print(f"  layer {layer:3d} neuron {neuron:6d}  attribution {value:.4g}")


def add_attribute_prompt(sub: argparse._SubParsersAction) -> None:
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


def add_estimate(sub: argparse._SubParsersAction) -> None:
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
