"""The interventions phase's subcommands: `causal`, `intervene`, `intervention-summary`, `intervene-prompt`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import logging
import re

from knrecall.cliutil import load_rule_model, model_meta, model_run_arguments, rule_neuron, rule_payload, set_threads
from knrecall.errors import KnrecallError


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


def add_causal(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("causal", help="per-item causal effects: gold probability with each hop's KNs suppressed")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--predictions", required=True, help="the model's predictions.parquet (its own chains)")
    p.add_argument("--kns", required=True, help="the model's kns.parquet")
    p.add_argument("--params", required=True, help="JSON with 'interventions', 'model', 'seed' and "
                   "optionally 'attribution' ({'neuron': ...}, default ffn_input)")
    model_run_arguments(p, batch_size=64)
    p.add_argument("--out", required=True, help="output: causal.parquet")
    p.set_defaults(func=cmd_causal)


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


def add_intervene(sub: argparse._SubParsersAction) -> None:
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


def add_intervention_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("intervention-summary", help="accuracy and gold probability changes with CIs, KN vs random")
    p.add_argument("--items", required=True, help="items.parquet")
    p.add_argument("--shards", nargs="+", required=True, help="the model's interventions shard files")
    p.add_argument("--params", required=True, help="JSON with 'recall' (bootstrap_resamples) and 'seed'")
    p.add_argument("--model-name", default="")
    p.add_argument("--out", required=True, help="the model's intervention metrics (JSON)")
    p.set_defaults(func=cmd_intervention_summary)


def cmd_intervene_prompt(args: argparse.Namespace) -> None:
    from knrecall.interventions.prompt import intervene
    from knrecall.models.load import load

    neurons: dict[int, list[int]] = {}
    for text in args.neuron:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        if not match:
            raise KnrecallError(f"--neuron '{text}': expected LAYER:INDEX, e.g. 3:117")
        neurons.setdefault(int(match[1]), []).append(int(match[2]))
    set_threads(args.threads)
    model, tokenizer = load(args.model, revision=args.revision, dtype=args.dtype,
                            trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle, device=args.device)
    result = intervene(model, tokenizer, args.prompt, args.gold, neurons, factor=args.factor, policy=args.policy,
                       cot=args.cot, max_new_tokens=args.max_new_tokens, neuron=args.neuron_definition)
    for label, factor, answer in (("without", 1.0, result.before), ("with", args.factor, result.after)):
        what = "" if factor == 1.0 else f" (x{factor:g} on {result.n_neurons} neurons, {args.policy})"
        print(f"{label} intervention{what}: answer {answer.answer!r}, P(gold first token) = {answer.gold_prob:.4f}; "
              f"generation {answer.generation!r}")


def add_intervene_prompt(sub: argparse._SubParsersAction) -> None:
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
