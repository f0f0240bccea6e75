"""Hop-1 KNs found at the subject (DESIGN.md §9): one more measurement variant for the scoreboard.

The KNs of a fact are attributed at the position that predicts its answer (the single-hop prompt's last token).
Mechanistic work on two-hop queries (Biran et al. 2024, "Hopping Too Late") finds the bridge resolved in early
layers at the first hop's tokens, so the neurons that carry hop 1 in the two-hop prompt may be the ones at the
SUBJECT, not those at the answer position. This variant:

1. samples `subject_site_items` items (every pathway-revealing item first, they carry the ground truth; then a
   seeded sample of the others whose subject is known);
2. attributes each sampled item's hop-1 fact at the subject's last token of its single-hop prompts
   (`knrecall.attribution.position`: same IG steps, rule, target and neuron definition as the attribution phase;
   a paraphrase in which the subject is not found is skipped, `subject_not_found`) and selects refined KNs with
   the KN phase's thresholds; the baseline b_i of a KN is its mean activation at the subject over the paraphrases;
3. reads those KNs in the two-hop sequences at the three positions of the recall phase (step, last_prompt,
   subject_last), and on other sampled items for the null, scores them with every variant
   (`knrecall.recall.analysis.all_scores`), and measures their causal effect (`knrecall.interventions.causal`:
   suppressed at every position, layer-matched random controls);
4. `knrecall.validation.scoreboard.subject_site_rows` (called by the scoreboard rule, so that its bootstrap
   settings do not rerun the above; torch-free) gives scoreboard rows for hop 1 (specificity, causal agreement,
   pathway AUC; SC is not defined here, it needs both hops' decisions) — `rows` — and, for a fair comparison, the same rows of
   the recall phase's own hop-1 KNs (found at the answer position) on the SAME items — `answer_site_rows`.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable

import polars as pl
import torch
from tqdm import tqdm

from knrecall.attribution.kns import Selection, refined_sets, select_kns
from knrecall.attribution.position import attribute_at_positions
from knrecall.attribution.run import AttributionSettings, neuron_rows, usable_prompts
from knrecall.data.facts import facts_of
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.interventions.causal import causal_effects
from knrecall.models.adapters import adapter_for
from knrecall.prompts import single_hop_prompt
from knrecall.recall.activations import activations_at, columns_for
from knrecall.recall.analysis import all_scores
from knrecall.recall.measure import block_rows
from knrecall.recall.scores import null_pairs
from knrecall.recall.steps import entity_token_variants, prompt_input_ids, subject_last_position
from knrecall.skips import Skip, record

log = logging.getLogger(__name__)

# Facts whose single-hop prompts are attributed together: prompts of one shape share a forward
# (`attribute_at_positions`), and only a block's maps are held at once.
FACTS_PER_BLOCK = 32


def sample_items(items: list[Item], n: int, seed: int) -> list[Item]:
    """The items of the variant: every pathway-revealing item with a subject, then a seeded sample of the other
    items with a subject, `n` in all (fewer when there are fewer), in case_id order."""
    known = sorted((item for item in items if item.subject), key=lambda item: item.case_id)
    pathway = [item for item in known if item.shortcut_conflicting]
    others = [item for item in known if not item.shortcut_conflicting]
    fill = max(0, min(len(others), n - len(pathway)))
    chosen = pathway[:n] + random.Random(f"{seed}:subject_site").sample(others, fill)
    return sorted(chosen, key=lambda item: item.case_id)


def _hop1_subjects(items: list[Item]) -> dict[str, tuple[object, str]]:
    """fact_id -> (fact, subject) of every hop-1 fact of the items."""
    facts, links = facts_of(items)
    subject = {item.case_id: item.subject for item in items}
    return {fid: (facts[fid], subject[case_id]) for case_id, hop, fid in links if hop == 1}


def subject_kns(items: list[Item], model, tokenizer, templates: dict[str, str], settings: AttributionSettings,
                selection: Selection, max_rows: int, *, wrap: Callable[[str], str] | None = None,
                skipped: list[Skip] | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(KN table as `select_kns` gives it, baselines fact_id/layer/neuron/baseline, info) of the items' hop-1 facts
    attributed at the subject's last token of each single-hop prompt."""
    wrap = wrap or (lambda prompt: prompt)
    limit = getattr(model.config, "max_position_embeddings", None)
    adapter = adapter_for(model, settings.neuron)
    neurons: dict[str, list] = {"fact_id": [], "paraphrase": [], "layer": [], "neuron": [], "attribution": []}
    prompt_max: dict[str, list] = {"fact_id": [], "paraphrase": [], "max_attribution": []}
    mean_activations: dict[str, torch.Tensor] = {}
    errors: list[float] = []
    hop1 = list(_hop1_subjects(items).items())
    with tqdm(total=len(hop1), desc="subject-site attribution", unit="fact", file=sys.stderr, mininterval=10) as bar:
        for start in range(0, len(hop1), FACTS_PER_BLOCK):  # a block's prompts share forwards (few maps held)
            jobs = []
            for fid, (fact, subject) in hop1[start : start + FACTS_PER_BLOCK]:
                prompts = [wrap(single_hop_prompt(q, templates)) for q in fact.questions]
                try:
                    variants = entity_token_variants(tokenizer, subject, ())
                except KnrecallError:  # a name the tokenizer cannot spell: never found, each prompt skipped below
                    variants = []
                for paraphrase, prompt, (prompt_ids, answer_ids) in usable_prompts(
                        tokenizer, prompts, fact.answer, limit, fid, skipped, "subject_site"):
                    position = subject_last_position(prompt_ids, variants)
                    if position is None:
                        record(skipped, Skip("subject_site", "subject_not_found", f"subject {subject!r} not found "
                                             f"in prompt {prompt[:80]!r}", kind="fact", paraphrase=paraphrase,
                                             fact_id=fid))
                        continue
                    jobs.append((fid, paraphrase, prompt_ids, answer_ids, position))
            maps = attribute_at_positions(model, adapter, [job[2:] for job in jobs], steps=settings.steps,
                                          rule=settings.rule, target=settings.target, max_rows=max_rows)
            acts: dict[str, list[torch.Tensor]] = {}
            for (fid, paraphrase, *_), ig in zip(jobs, maps):
                layer_idx, neuron_idx = neuron_rows(ig, settings.store_threshold, settings.full_maps)
                neurons["fact_id"] += [fid] * len(layer_idx)
                neurons["paraphrase"] += [paraphrase] * len(layer_idx)
                neurons["layer"] += layer_idx.tolist()
                neurons["neuron"] += neuron_idx.tolist()
                neurons["attribution"] += ig.attributions[layer_idx, neuron_idx].tolist()
                prompt_max["fact_id"].append(fid)
                prompt_max["paraphrase"].append(paraphrase)
                prompt_max["max_attribution"].append(float(ig.attributions.max()))
                errors += ig.completeness_error.tolist()
                acts.setdefault(fid, []).append(ig.activations)
            for fid, fact_acts in acts.items():
                mean_activations[fid] = torch.stack(fact_acts).mean(dim=0)
            bar.update(len(hop1[start : start + FACTS_PER_BLOCK]))
    neuron_frame = pl.DataFrame(neurons, schema={"fact_id": pl.String, "paraphrase": pl.Int16, "layer": pl.Int16,
                                                 "neuron": pl.Int32, "attribution": pl.Float32})
    prompt_frame = pl.DataFrame(prompt_max, schema={"fact_id": pl.String, "paraphrase": pl.Int16,
                                                    "max_attribution": pl.Float32})
    kns, info = select_kns(neuron_frame, prompt_frame, selection, settings.store_threshold, settings.neuron)
    baselines = pl.DataFrame(
        [{"fact_id": fid, "layer": layer, "neuron": neuron, "baseline": float(mean_activations[fid][layer, neuron])}
         for fid, kn_set in refined_sets(kns).items() for layer, neuron in kn_set],
        schema={"fact_id": pl.String, "layer": pl.Int16, "neuron": pl.Int32, "baseline": pl.Float32})
    info.update({"facts": len(hop1), "prompts_attributed": prompt_frame.height,
                 "completeness_error_median": float(torch.tensor(errors).median()) if errors else None})
    return kns, baselines, info


def subject_activations(items: list[Item], predictions: pl.DataFrame, steps: pl.DataFrame, kns: pl.DataFrame,
                        model, tokenizer, null_per_fact: int, seed: int, batch_size: int,
                        neuron: str) -> pl.DataFrame:
    """The activations table (`knrecall.recall.measure` schema, hop 1 only) of the subject-site KNs: every sampled
    item's own KNs and, for the null, its KNs on other sampled items, at the step / last prompt / subject."""
    sets = refined_sets(kns)
    adapter = adapter_for(model, neuron)
    selection: dict[int, list[int]] = {}
    for layer, n in sorted({kn for kn_set in sets.values() for kn in kn_set}):
        selection.setdefault(layer, []).append(n)
    if not selection:
        return block_rows([], sets, {}, [], {})
    column = {pair: j for j, pair in enumerate(columns_for(model, selection, adapter).pairs)}
    cases = {item.case_id for item in items}
    two_hop = predictions.filter((pl.col("kind") == "two_hop") & pl.col("case_id").is_in(list(cases)))
    measured = two_hop.select("case_id", "condition", "prompt", "generated_ids").join(
        steps, on=["case_id", "condition"]).sort("condition", "case_id")
    sequences, positions, sequence_of = [], [], {}
    for index, r in enumerate(measured.iter_rows(named=True)):
        sequences.append(prompt_input_ids(tokenizer, r["prompt"]) + list(r["generated_ids"]))
        # the slots of recall.measure: (hop 1 step, hop 2 step, last prompt, subject); hop 2 is not read here
        positions.append([r["hop1_position"], r["hop1_position"], r["last_prompt_position"], r["subject_position"]])
        sequence_of[(r["case_id"], r["condition"])] = index
    values = activations_at(model, adapter, sequences, positions, neurons=selection, batch_size=batch_size)
    _, links = facts_of(items)
    conditions_of: dict[str, list[str]] = {}
    for case_id, condition in sequence_of:
        conditions_of.setdefault(case_id, []).append(condition)
    blocks = [("item", fid, case_id, condition, 1) for case_id, hop, fid in links if hop == 1 and fid in sets
              for condition in conditions_of.get(case_id, [])]
    item_facts = pl.DataFrame(links, schema=["case_id", "hop", "fact_id"], orient="row")
    pairs = null_pairs(item_facts, rng_seed=seed, max_per_fact=null_per_fact).filter(
        pl.col("fact_id").is_in(list(sets)))
    conditions = measured["condition"].unique(maintain_order=True).to_list()
    blocks += [("null", fid, case_id, condition, 1) for fid, case_id in pairs.iter_rows() for condition in conditions
               if (case_id, condition) in sequence_of]
    return block_rows(blocks, sets, column, values, sequence_of)


def subject_site(items: list[Item], predictions: pl.DataFrame, steps: pl.DataFrame, model, tokenizer,
                 templates: dict[str, str], settings: AttributionSettings, selection: Selection, *, n_items: int,
                 null_per_fact: int, suppress_factor: float, random_seeds: int, seed: int, model_name: str,
                 max_rows: int = 256, batch_size: int = 16, wrap: Callable[[str], str] | None = None):
    """(summary, subject-site KN table, item scores, null scores, causal table (hop 1), skips) of the variant; the
    scoreboard rows come from `knrecall.validation.scoreboard.subject_site_rows`."""
    sample = sample_items(items, n_items, seed)
    if not sample:
        raise KnrecallError("subject-site KNs: no item has a subject (the items' 'subject' field)")
    cases = [item.case_id for item in sample]
    log.info("subject-site KNs: %d items (%d pathway-revealing)", len(sample),
             sum(bool(item.shortcut_conflicting) for item in sample))
    skipped: list[Skip] = []
    kns, baselines, info = subject_kns(sample, model, tokenizer, templates, settings, selection, max_rows, wrap=wrap,
                                       skipped=skipped)
    activations = subject_activations(sample, predictions, steps, kns, model, tokenizer, null_per_fact, seed,
                                      batch_size, settings.neuron)
    sets = refined_sets(kns)
    _, links = facts_of(sample)
    hop1 = pl.DataFrame([(c, h, f, len(sets.get(f, []))) for c, h, f in links if h == 1],
                        schema={"case_id": pl.String, "hop": pl.Int8, "fact_id": pl.String, "n_kns": pl.Int64},
                        orient="row")
    answered = predictions.filter(pl.col("kind") == "two_hop").select("case_id", "condition")
    conditions = steps["condition"].unique(maintain_order=True).to_list()
    scores, null_scores = all_scores(baselines, activations, hop1, conditions, answered)
    causal, causal_skips = causal_effects(sample, predictions.filter(pl.col("case_id").is_in(cases)), sets, model,
                                          tokenizer, suppress_factor, random_seeds, model_name, batch_size,
                                          settings.neuron)
    kn_counts = [len(sets.get(f, [])) for f in hop1["fact_id"].unique().sort()]
    summary = {"model": model_name, "items": len(sample),
               "pathway_items": sum(bool(item.shortcut_conflicting) for item in sample),
               "kns_per_fact_mean": round(sum(kn_counts) / len(kn_counts), 3) if kn_counts else None,
               "facts_without_kns": sum(1 for n in kn_counts if n == 0), "thresholds": info, "case_ids": cases}
    return summary, kns, scores, null_scores, causal.filter(pl.col("hop") == 1), skipped + causal_skips
