"""Per-item causal effects of each hop's knowledge neurons (DESIGN.md §9, "causal agreement"): usable on any model.

For every two-hop item, prompt condition and hop j, the model reads its own answer context — the prompt followed
by the model's own generation up to the step that starts its answer span (`answer_step`, as the intervention
phase reads `gold_prob`: the first step without chain of thought, the step after the last "So the answer is" with
it) — and we record the probability of the gold answer's first token at that step (teacher forcing of the chain,
one forward, no generation), and whether it is the top-1 token:

- `base`: nothing scaled;
- `kn`: hop j's refined KNs multiplied by `suppress_factor` at EVERY position of the context (policy `all`);
- `random`: the same for layer-matched random neurons, control seeds 0 .. random_seeds − 1, drawn exactly as the
  intervention phase draws them (`knrecall.interventions.run.neurons_for`: same key, so the same neurons).

Without chain of thought (answer step 0), `gold_prob_kn` is the intervention phase's `gold_prob` of
`suppress_hop{j}` under policy `all` (tested). Under chain of thought the intervention phase regenerates the chain
under suppression; here the chain is the unsuppressed one, held fixed, so the effect is that of the KNs on the
answer given the chain.

Per row: `effect_kn` = gold_prob_kn − gold_prob_base (negative: suppressing the KNs lowers the answer),
`effect_random` = the mean over seeds of gold_prob_random − gold_prob_base, `breaks` = the gold token was top-1 at
base and is not under suppression (null when it was not top-1 at base), `breaks_random` the share of seeds that
break it. An item whose hop has no KNs has null KN figures (n_kns 0). An item without a prediction under a
condition (skipped by the answering phase) has no rows there. A context longer than the model's window, or a gold
answer that cannot be tokenized, is skipped (`knrecall.skips`: one log line, counted in the output's metadata and
the scoreboard's `skipped`).
"""

from __future__ import annotations

import logging
import sys

import polars as pl
from tqdm import tqdm

from knrecall.answer.plan import COT_CONDITIONS
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.interventions.controls import Neuron, as_layer_map
from knrecall.interventions.generate import greedy_generate
from knrecall.interventions.run import COT_ANSWER_CONTEXT, Intervention, answer_step, item_kn_sets, neurons_for
from knrecall.models.adapters import adapter_for
from knrecall.recall.steps import prompt_input_ids
from knrecall.skips import Skip, record
from knrecall.targets import answer_token_ids

log = logging.getLogger(__name__)

CAUSAL_SCHEMA = {"case_id": pl.String, "condition": pl.String, "hop": pl.Int8, "n_kns": pl.Int32,
                 "answer_position": pl.Int32, "gold_token": pl.Int32, "gold_prob_base": pl.Float32,
                 "gold_prob_kn": pl.Float32, "gold_prob_random": pl.Float32, "n_random": pl.Int32,
                 "effect_kn": pl.Float32, "effect_random": pl.Float32, "top1_base": pl.Boolean,
                 "top1_kn": pl.Boolean, "top1_random": pl.Float32, "breaks": pl.Boolean,
                 "breaks_random": pl.Float32}


def _contexts(items: list[Item], predictions: pl.DataFrame, tokenizer, limit: int | None, skipped: list[Skip]):
    """(case_id, condition, context ids, gold token) per two-hop prediction row."""
    by_case = {item.case_id: item for item in items}
    out = []
    rows = predictions.filter(pl.col("kind") == "two_hop").sort("condition", "case_id")
    for row in rows.iter_rows(named=True):
        item = by_case.get(row["case_id"])
        if item is None:
            raise KnrecallError(f"causal effects: prediction for unknown item {row['case_id']!r}")
        cot = row["condition"] in COT_CONDITIONS
        generated = list(row["generated_ids"])
        step = answer_step(tokenizer, generated, row["generation"], row["answer_span"], cot) if generated else 0
        context = prompt_input_ids(tokenizer, row["prompt"]) + generated[:step]
        try:
            gold = answer_token_ids(tokenizer, COT_ANSWER_CONTEXT if cot else row["prompt"], row["gold"])[0]
        except KnrecallError as exc:
            record(skipped, Skip("causal", "answer_tokens", str(exc), row["case_id"], condition=row["condition"]))
            continue
        if limit and len(context) + 1 > limit:
            record(skipped, Skip("causal", "prompt_too_long", f"its answer context of {len(context)} tokens exceeds "
                                 f"the model's context of {limit}", row["case_id"], condition=row["condition"]))
            continue
        out.append((row["case_id"], row["condition"], context, gold))
    return out


def causal_effects(items: list[Item], predictions: pl.DataFrame, refined: dict[str, list[Neuron]], model, tokenizer,
                   suppress_factor: float, random_seeds: int, model_name: str, batch_size: int = 64,
                   neuron: str = "ffn_input") -> tuple[pl.DataFrame, list[Skip]]:
    """(the per-item causal table, the skipped contexts); see the module docstring. `neuron` is the neuron
    definition the KNs were found under (`attribution.neuron`)."""
    adapter = adapter_for(model, neuron)
    width = adapter.width(model)
    kn_sets = item_kn_sets(items, refined)
    skipped: list[Skip] = []
    contexts = _contexts(items, predictions, tokenizer, getattr(model.config, "max_position_embeddings", None),
                         skipped)
    # runs: (context index, hop or None, kind, seed, neurons)
    runs: list[tuple[int, int | None, str, int | None, list[Neuron]]] = []
    for index, (case_id, _, _, _) in enumerate(contexts):
        runs.append((index, None, "base", None, []))
        sets = kn_sets.get(case_id, {})
        for hop in (1, 2):
            target = f"hop{hop}"
            if not sets.get(target):
                continue
            runs.append((index, hop, "kn", None, sets[target]))
            for seed in range(random_seeds):
                control = Intervention(f"random_suppress_{target}", "random", target, suppress_factor, seed)
                neurons = neurons_for(control, case_id, sets, width, model_name)
                if neurons:
                    runs.append((index, hop, "random", seed, neurons))
    order = sorted(range(len(runs)), key=lambda r: len(contexts[runs[r][0]][2]))
    prob: dict[int, float] = {}
    top1: dict[int, bool] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="causal effects", unit="batch", file=sys.stderr,
                      mininterval=10):
        batch = [runs[r] for r in order[start:start + batch_size]]
        generated = greedy_generate(
            model, [contexts[i][2] for i, *_ in batch], 1, [],
            neurons=[as_layer_map(n) for *_, n in batch],
            factor=[1.0 if kind == "base" else suppress_factor for _, _, kind, _, _ in batch],
            policy="all", gold_ids=[contexts[i][3] for i, *_ in batch], adapter=adapter, pad_id=tokenizer.pad_token_id)
        for r, result in zip(order[start:start + batch_size], generated):
            prob[r] = result.gold_probs[0]
            top1[r] = result.generated_ids[0] == contexts[runs[r][0]][3]
    return _table(contexts, runs, prob, top1, kn_sets), skipped


def _table(contexts, runs, prob, top1, kn_sets) -> pl.DataFrame:
    base = {runs[r][0]: r for r in range(len(runs)) if runs[r][2] == "base"}
    kn: dict[tuple[int, int], int] = {}
    random: dict[tuple[int, int], list[int]] = {}
    for r, (index, hop, kind, _, _) in enumerate(runs):
        if kind == "kn":
            kn[(index, hop)] = r
        elif kind == "random":
            random.setdefault((index, hop), []).append(r)
    rows = []
    for index, (case_id, condition, context, gold) in enumerate(contexts):
        b = base[index]
        for hop in (1, 2):
            k, controls = kn.get((index, hop)), random.get((index, hop), [])
            p_random = [prob[r] for r in controls]
            breaks_random = [top1[b] and not top1[r] for r in controls]
            rows.append({
                "case_id": case_id, "condition": condition, "hop": hop,
                "n_kns": len(kn_sets.get(case_id, {}).get(f"hop{hop}", [])), "answer_position": len(context) - 1,
                "gold_token": gold, "gold_prob_base": prob[b],
                "gold_prob_kn": prob[k] if k is not None else None,
                "gold_prob_random": sum(p_random) / len(p_random) if p_random else None,
                "n_random": len(controls),
                "effect_kn": prob[k] - prob[b] if k is not None else None,
                "effect_random": sum(p - prob[b] for p in p_random) / len(p_random) if p_random else None,
                "top1_base": top1[b], "top1_kn": top1[k] if k is not None else None,
                "top1_random": sum(top1[r] for r in controls) / len(controls) if controls else None,
                "breaks": (not top1[k]) if (k is not None and top1[b]) else None,
                "breaks_random": (sum(breaks_random) / len(controls)) if (controls and top1[b]) else None,
            })
    return pl.DataFrame(rows, schema=CAUSAL_SCHEMA)
