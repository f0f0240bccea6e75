"""Two models side by side in one real workflow run: a dataset file instead of the world, two local checkpoints of
different families (LLaMA and GPT-2), per-model results that meet in one report and one metrics file per phase.

The dataset is the real-fact fixture, answered under all five conditions: relations with a single object in it
give no conflict candidate, so those items are skipped under that conflict condition only (3 under conflict_hop1,
4 under conflict_hop2), counted, and every later phase copes. The GPT-2 checkpoint has a context too short for
some few-shot prompts: those items are skipped for that model only (a prompt too long for one model of a
multi-model run). The LLaMA checkpoint is "instruction-tuned": its tokenizer carries a chat template and
`chat_template: true` wraps every prompt of every phase in it."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import FIXTURES, TINY_PARAMS
from knrecall.answer import plan_prompts
from knrecall.data.conditions import CONDITIONS, DEFAULT_TEMPLATES
from knrecall.data.importers import import_dataset
from knrecall.report import FIGURES
from knrecall.world.tokenizer import build_tokenizer
from workflow_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.slow

MODELS = {"tiny-llama": "llama", "tiny-gpt2": "gpt2"}
CHAT = "tiny-llama"  # the model with a chat template (chat_template: true)
TEMPLATE = ("{% for message in messages %}User: {{ message['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}Assistant:{% endif %}")
NO_CANDIDATE = {"conflict_hop1": 3, "conflict_hop2": 4}  # single-object relations of the real-fact fixture
INTERVENED = ["direct", "zero_shot_cot", "few_shot_cot", "conflict_hop2"]


def _checkpoint(folder, family: str, texts: list[str], positions: int = 256, chat: bool = False) -> None:
    tokenizer = build_tokenizer(texts)
    if chat:
        tokenizer.chat_template = TEMPLATE
    sizes = ({"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 40, "n_positions": positions} if family == "gpt2"
             else {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
                   "max_position_embeddings": positions})
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **sizes)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _too_long_for_gpt2(texts: list[str]) -> tuple[int, set[str]]:
    """A context for the GPT-2 checkpoint that holds every prompt but the longest few-shot ones (with the tokens
    to generate), and the items whose few-shot prompt it does not hold."""
    items = import_dataset(FIXTURES / "tfrkn_real.json")
    tokenizer = build_tokenizer(texts)
    cot_new, new = TINY_PARAMS["answer"]["cot_max_new_tokens"], TINY_PARAMS["answer"]["max_new_tokens"]
    needed = {c: {p.item.case_id: len(tokenizer(p.query.prompt).input_ids) + (cot_new if c.endswith("cot") else new)
                  for p in plan_prompts(items, DEFAULT_TEMPLATES, c, 0, 1, single_hop=False)} for c in CONDITIONS}
    few = sorted(needed["few_shot_cot"].values())
    positions = few[len(few) // 2]
    others = max(n for c in CONDITIONS if c != "few_shot_cot" for n in needed[c].values())
    assert others <= positions < few[-1]  # the short context hits few-shot prompts only, and not all of them
    return positions, {case for case, n in needed["few_shot_cot"].items() if n > positions}


@pytest.fixture(scope="session")  # once per test process, however pytest-xdist interleaves this module's tests
def two_model_run(tmp_path_factory):
    project = copy_workflow(tmp_path_factory.mktemp("two") / "proj")
    records = json.loads((FIXTURES / "tfrkn_real.json").read_text())
    (project / "data").mkdir()
    shutil.copy2(FIXTURES / "tfrkn_real.json", project / "data" / "items.json")
    texts = [json.dumps(records), "Q: A: Let's think step by step. So the answer is Context: User: Assistant:"]
    positions, too_long = _too_long_for_gpt2(texts)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"] = {"source": "tfrkn", "path": "data/items.json"}
    assert params["answer"]["conditions"] == list(CONDITIONS)  # all five, the default
    params["interventions"]["conditions"] = INTERVENED
    # one attribution and one intervention shard per model (the shards are tested elsewhere): fewer jobs to start
    params["attribution"]["shards"] = params["interventions"]["shards"] = 1
    params["models"] = {}
    for name, family in MODELS.items():
        _checkpoint(project / "checkpoints" / name, family, texts, positions if family == "gpt2" else 256,
                    chat=name == CHAT)
        params["models"][name] = {"path": f"checkpoints/{name}", "dtype": "float32", "chat_template": name == CHAT}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake(project)
    return project, too_long


def _skipped(name: str, too_long: set[str]) -> dict[str, int]:
    """Items skipped per condition for model `name`."""
    return {**NO_CANDIDATE, **({"few_shot_cot": len(too_long)} if name == "tiny-gpt2" else {})}


def test_every_model_has_its_results(two_model_run):
    project, too_long = two_model_run
    results = project / "results"
    items = pl.read_parquet(results / "items.parquet")
    assert items.height == 15 and not (results / "world").exists()
    for name in MODELS:
        predictions = pl.read_parquet(results / "predictions" / f"{name}.parquet")
        skipped = _skipped(name, too_long)
        two_hop = predictions.filter(pl.col("kind") == "two_hop")
        assert set(two_hop["condition"]) == set(CONDITIONS)
        for condition in CONDITIONS:
            assert two_hop.filter(pl.col("condition") == condition).height == items.height - skipped.get(condition, 0)
        assert pl.read_parquet(results / "kns" / f"{name}.parquet").height > 0
        answered = two_hop.height
        assert pl.read_parquet(results / "recall" / name / "recall.parquet").height == answered * 2
        causal = pl.read_parquet(results / "interventions" / name / "causal.parquet")
        assert causal.height == answered * 2
        shards = [pl.read_parquet(p) for p in sorted((results / "interventions" / name).glob("shard-*.parquet"))]
        base = pl.concat(shards).filter(pl.col("kind") == "base")
        assert len(shards) == 1 and base.height == sum(items.height - skipped.get(c, 0) for c in INTERVENED)
    for metrics in ("attribution", "recall", "interventions"):
        data = json.loads((results / "metrics" / f"{metrics}.json").read_text())
        assert set(data["models"]) == set(MODELS), metrics


def test_skipped_items_are_listed_and_counted(two_model_run):
    project, too_long = two_model_run
    results = project / "results"
    recall = json.loads((results / "metrics" / "recall.json").read_text())["models"]
    interventions = json.loads((results / "metrics" / "interventions.json").read_text())["models"]
    for name in MODELS:
        expected = _skipped(name, too_long)
        table = pl.read_parquet(results / "predictions" / f"{name}.skipped.parquet")
        assert table.height == sum(expected.values()) and set(table["phase"]) == {"answer"}
        assert dict(table.group_by("condition").len().iter_rows()) == expected
        reasons = dict(table.select("condition", "reason").unique().iter_rows())
        assert reasons == {**{c: "no_conflict_candidate" for c in NO_CANDIDATE},
                           **({"few_shot_cot": "prompt_too_long"} if name == "tiny-gpt2" else {})}
        if name == "tiny-gpt2":
            assert set(table.filter(pl.col("condition") == "few_shot_cot")["case_id"]) == too_long
        log = (results / "logs" / f"answer_{name}.log").read_text()
        assert log.count("skipped item ") == sum(expected.values())  # one log line per skipped item
        for condition in CONDITIONS:
            entry = recall[name]["conditions"][condition]
            assert entry["n_skipped"] == expected.get(condition, 0)
            assert entry["n_items"] + entry["n_skipped"] == 15
        assert recall[name]["skipped"]["answer"]["by_condition"] == {
            c: dict(table.filter(pl.col("condition") == c).group_by("reason").len().iter_rows()) for c in expected}
        for condition in INTERVENED:
            base = interventions[name]["conditions"][condition]["base"]
            assert base["n_skipped"] == expected.get(condition, 0) and base["n_items"] == 15 - base["n_skipped"]


def test_the_chat_model_sees_its_template_in_every_phase(two_model_run):
    project, _ = two_model_run
    results = project / "results"
    for name in MODELS:
        chat = name == CHAT
        prompts = pl.read_parquet(results / "predictions" / f"{name}.parquet")["prompt"]
        layers = pl.concat([pl.read_parquet(p) for p in sorted((results / "attribution" / name).glob("*.layers.parquet"))])
        for column in (prompts, layers["prompt"]):
            assert column.str.starts_with("User: ").all() == chat and column.str.ends_with("\nAssistant:").all() == chat
            assert column.str.starts_with("User: ").any() == chat


def test_the_report_counts_what_was_skipped(two_model_run):
    project, too_long = two_model_run
    page = (project / "results" / "report" / "index.html").read_text()
    assert page.count("<h3>Skipped items</h3>") == len(MODELS)
    assert "no_conflict_candidate" in page and "prompt_too_long" in page


def test_the_report_shows_both_models(two_model_run):
    report = two_model_run[0] / "results" / "report"
    page = (report / "index.html").read_text()
    assert "<h2>Across models</h2>" in page
    for name in MODELS:
        assert f'<h2 id="model-{name}">Model {name}</h2>' in page
        for figure in FIGURES:
            assert (report / "figures" / name / f"{figure}.png").stat().st_size > 1000
    assert "Ground-truth validation" not in page  # real data have no ground truth
    assert set(pl.read_csv(report / "data" / "accuracy.csv")["model"]) == set(MODELS)
