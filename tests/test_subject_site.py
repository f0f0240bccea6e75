"""The subject-site variant (knrecall.validation.subject_site): which items, KNs attributed at the subject's last
token, their baselines and activations, skips, on a tiny model."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
import torch

from conftest import run_cli
from knrecall.attribution.kns import Selection, refined_sets
from knrecall.attribution.position import attribute_at_position
from knrecall.attribution.run import AttributionSettings
from knrecall.data.facts import facts_of
from knrecall.models.adapters import adapter_for
from knrecall.recall.activations import activations_at, columns_for
from knrecall.recall.steps import entity_token_variants, prompt_input_ids, subject_last_position
from knrecall.targets import teacher_forced_contexts
from knrecall.validation.subject_site import sample_items, subject_activations, subject_kns
from tests.test_interventions import _tiny_world_model, _world_items

TEMPLATES = {"direct": "Q: {question} A:"}
SETTINGS = AttributionSettings(steps=4, rule="gauss_legendre", target="prob", store_threshold=0.1, full_maps=False)
SELECTION = Selection(0.2, 0.5, False, (2, 5))


def _items():
    """The tiny world, each hop-1 fact with a second paraphrase that does not name the subject (skipped)."""
    return [dataclasses.replace(item, fact1_query=[*item.fact1_query, "Where was that one born ?"])
            for item in _world_items()]


@pytest.fixture(scope="module")
def found():
    items = _items()
    model, tok = _tiny_world_model(items)
    skipped: list = []
    kns, baselines, info = subject_kns(items, model, tok, TEMPLATES, SETTINGS, SELECTION, 64, skipped=skipped)
    return items, model, tok, kns, baselines, info, skipped


def test_sample_takes_every_pathway_item_first_then_a_seeded_sample():
    items = _world_items()
    items[1] = dataclasses.replace(items[1], shortcut_conflicting=True)
    items[4] = dataclasses.replace(items[4], subject=None)
    chosen = sample_items(items, 3, seed=0)
    assert len(chosen) == 3 and items[1] in chosen and items[4] not in chosen
    assert [i.case_id for i in chosen] == sorted(i.case_id for i in chosen)
    assert sample_items(items, 3, seed=0) == chosen  # deterministic
    assert len(sample_items(items, 100, seed=0)) == 5  # every item with a subject
    assert {i.case_id for s in range(6) for i in sample_items(items, 3, seed=s)} > {i.case_id for i in chosen}


def test_hop1_facts_are_attributed_at_the_subject_and_unnamed_subjects_are_skipped(found):
    items, model, tok, kns, baselines, info, skipped = found
    assert info["facts"] == len(items) and info["prompts_attributed"] == len(items)  # the second paraphrase: skipped
    assert len(skipped) == len(items) and {s.reason for s in skipped} == {"subject_not_found"}
    assert {s.phase for s in skipped} == {"subject_site"} and all(s.paraphrase == 1 for s in skipped)
    # a fact's coarse KNs are those of the map attributed at the subject's last token
    item = items[0]
    fid = facts_of([item])[1][0][2]
    prompt_ids, answer_ids = teacher_forced_contexts(tok, TEMPLATES["direct"].format(question=item.fact1_query[0]),
                                                     item.fact1_ans)
    position = subject_last_position(prompt_ids, entity_token_variants(tok, item.subject))
    assert position is not None and position < len(prompt_ids) - 1
    ig = attribute_at_position(model, adapter_for(model), prompt_ids, answer_ids, position, steps=4)
    coarse = kns.filter((pl.col("fact_id") == fid) & (pl.col("level") == "coarse"))
    expected = {tuple(map(int, p)) for p in torch.nonzero(ig.attributions > 0.2 * ig.attributions.max()).tolist()}
    assert coarse.height > 0 and set(zip(coarse["layer"], coarse["neuron"])) == expected
    # baselines: the KN's activation at the subject (the mean over the one attributed paraphrase)
    b = baselines.filter(pl.col("fact_id") == fid)
    assert b.height == len(refined_sets(kns)[fid])
    for row in b.iter_rows(named=True):
        assert row["baseline"] == pytest.approx(float(ig.activations[row["layer"], row["neuron"]]), rel=1e-5)


def test_activations_are_read_at_the_recall_phase_positions_and_nulls_on_other_items(found):
    items, model, tok, kns, _, _, _ = found
    prompts = {it.case_id: f"Q: {it.two_hop} A:" for it in items}
    predictions = pl.DataFrame({"case_id": list(prompts), "condition": "direct", "kind": "two_hop",
                                "prompt": list(prompts.values()), "generated_ids": [[5, 6]] * len(prompts)})
    steps = []
    for case_id, prompt in prompts.items():
        ids = prompt_input_ids(tok, prompt)
        subject = subject_last_position(ids, entity_token_variants(tok, case_id.split(":")[1]))
        steps.append({"case_id": case_id, "condition": "direct", "hop1_position": len(ids) - 1,
                      "hop2_position": len(ids) - 1, "last_prompt_position": len(ids) - 1,
                      "subject_position": subject})
    steps = pl.DataFrame(steps)
    table = subject_activations(items, predictions, steps, kns, model, tok, null_per_fact=3, seed=0, batch_size=4,
                                neuron="ffn_input")
    assert set(table["hop"]) == {1} and set(table["kind"]) == {"item", "null"}
    sets = refined_sets(kns)
    fact_of = {case_id: fid for case_id, hop, fid in facts_of(items)[1] if hop == 1}
    own = table.filter(pl.col("kind") == "item")
    assert own.height == sum(len(sets.get(f, [])) for f in fact_of.values())
    nulls = table.filter(pl.col("kind") == "null")
    assert nulls.height > 0 and all(fact_of[c] != f for c, f in zip(nulls["case_id"], nulls["fact_id"]))
    # one value checked by hand: the KN's activation at the item's subject in its two-hop sequence
    row = own.row(0, named=True)
    step = steps.filter(pl.col("case_id") == row["case_id"]).row(0, named=True)
    selection = {row["layer"]: [row["neuron"]]}
    (read,) = activations_at(model, adapter_for(model), [prompt_input_ids(tok, prompts[row["case_id"]]) + [5, 6]],
                             [[step["subject_position"], step["last_prompt_position"]]], neurons=selection)
    assert list(columns_for(model, selection).pairs) == [(row["layer"], row["neuron"])]
    assert row["activation_subject_last"] == pytest.approx(float(read[0, 0]), rel=1e-5, abs=1e-6)
    assert row["activation_last_prompt"] == pytest.approx(float(read[1, 0]), rel=1e-5, abs=1e-6)


def test_a_subject_the_tokenizer_cannot_spell_is_skipped_not_fatal():
    items = _world_items()
    model, tok = _tiny_world_model(items)
    items[0] = dataclasses.replace(items[0], subject="Zzyzx")  # not in the tokenizer's vocabulary: only [UNK]
    skipped: list = []
    _, _, info = subject_kns(items, model, tok, TEMPLATES, SETTINGS, SELECTION, 64, skipped=skipped)
    assert [(s.reason, s.paraphrase) for s in skipped] == [("subject_not_found", 0)]
    assert info["prompts_attributed"] == len(items) - 1


def test_a_dataset_without_subjects_skips_the_variant_and_the_run_goes_on(tmp_path):
    import json

    from knrecall.data.items import write_items

    write_items([dataclasses.replace(item, subject=None) for item in _world_items()], tmp_path / "items.parquet")
    params = {"attribution": {}, "kns": {}, "recall": {}, "interventions": {}, "validation": {}, "prompts": TEMPLATES,
              "model": {"path": str(tmp_path / "no-model")}, "seed": 0}
    outs = {flag: tmp_path / name for flag, name in (("--out", "s.json"), ("--kns-out", "k.parquet"),
                                                     ("--scores-out", "s.parquet"), ("--null-scores-out", "n.parquet"),
                                                     ("--causal-out", "c.parquet"))}
    result = run_cli(["subject-site", "--items", str(tmp_path / "items.parquet"), "--predictions", "unused",
                      "--steps", "unused", "--params", json.dumps(params),
                      *[str(x) for kv in outs.items() for x in kv]])
    assert result.returncode == 0, result.stderr
    summary = json.loads(outs["--out"].read_text())
    assert summary["items"] == 0 and "no item has a subject" in summary["not_run"]
    assert all(path.exists() for path in outs.values()) and "not run" in result.stderr
