"""Two models side by side in one real workflow run: a dataset file instead of the world, two local checkpoints of
different families (LLaMA and GPT-2), per-model results that meet in one report and one metrics file per phase."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import FIXTURES
from knrecall.report import FIGURES
from knrecall.world.tokenizer import build_tokenizer
from workflow_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.slow

MODELS = {"tiny-llama": "llama", "tiny-gpt2": "gpt2"}


def _checkpoint(folder, family: str, texts: list[str]) -> None:
    tokenizer = build_tokenizer(texts)
    sizes = ({"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 40, "n_positions": 256} if family == "gpt2" else
             {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
              "max_position_embeddings": 256})
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **sizes)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="session")  # once per test process, however pytest-xdist interleaves this module's tests
def two_model_run(tmp_path_factory):
    project = copy_workflow(tmp_path_factory.mktemp("two") / "proj")
    records = json.loads((FIXTURES / "tfrkn_real.json").read_text())
    (project / "data").mkdir()
    shutil.copy2(FIXTURES / "tfrkn_real.json", project / "data" / "items.json")
    texts = [json.dumps(records), "Q: A: Let's think step by step. So the answer is Context:"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"] = {"source": "tfrkn", "path": "data/items.json"}
    # the 15 hand-written facts have relations with a single object, so no conflict context can be built for them
    params["answer"]["conditions"] = ["direct", "zero_shot_cot", "few_shot_cot"]
    params["models"] = {}
    for name, family in MODELS.items():
        _checkpoint(project / "checkpoints" / name, family, texts)
        params["models"][name] = {"path": f"checkpoints/{name}", "dtype": "float32"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake(project)
    return project


def test_every_model_has_its_results(two_model_run):
    results = two_model_run / "results"
    items = pl.read_parquet(results / "items.parquet")
    assert items.height == 15 and not (results / "world").exists()
    for name in MODELS:
        predictions = pl.read_parquet(results / "predictions" / f"{name}.parquet")
        assert predictions.filter(pl.col("kind") == "two_hop").height == 3 * items.height
        assert pl.read_parquet(results / "kns" / f"{name}.parquet").height > 0
        assert pl.read_parquet(results / "recall" / name / "recall.parquet").height == items.height * 3 * 2
        shards = [pl.read_parquet(p) for p in sorted((results / "interventions" / name).glob("shard-*.parquet"))]
        assert len(shards) == 2 and pl.concat(shards).filter(pl.col("kind") == "base").height == items.height * 3
    for metrics in ("attribution", "recall", "interventions"):
        data = json.loads((results / "metrics" / f"{metrics}.json").read_text())
        assert set(data["models"]) == set(MODELS), metrics


def test_the_report_shows_both_models(two_model_run):
    report = two_model_run / "results" / "report"
    page = (report / "index.html").read_text()
    assert "<h2>Across models</h2>" in page
    for name in MODELS:
        assert f'<h2 id="model-{name}">Model {name}</h2>' in page
        for figure in FIGURES:
            assert (report / "figures" / name / f"{figure}.png").stat().st_size > 1000
    assert "Ground-truth validation" not in page  # real data have no ground truth
    assert set(pl.read_csv(report / "data" / "accuracy.csv")["model"]) == set(MODELS)
