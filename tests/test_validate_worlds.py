"""Replication across worlds (`snakemake validate_worlds`): the aggregate on synthetic per-seed metrics with known
answers, the CLI end to end, the workflow's plan (dry runs), a bad parameter, and a real run of two tiny worlds."""

import json
import subprocess
import sys

import polars as pl
import pytest
import yaml

from conftest import TINY_PARAMS
from knrecall.config import Params, parse_params
from knrecall.errors import KnrecallError
from knrecall.validation.replicate import reference, render_html, replicate, seed_params, summarise
from workflow_helpers import copy_workflow, edit_params, scheduled_jobs, snakemake


def row(condition="direct", hop=1, variant="projection", position="last_prompt", **figures):
    return {"condition": condition, "hop": hop, "variant": variant, "position": position, "n_own": 100, **figures}


def recall_file(rows=None, validation=None, chosen=None, model="world"):
    entry = {"conditions": {"direct": {"accuracy": 0.9}}}
    if rows is not None or chosen is not None:
        rule = {"text": "pre-registered", "configured": {"variant": "ratio", "position": "step"}}
        if chosen is not None:
            rule["chosen"] = {"variant": chosen[0], "position": chosen[1]}
        entry["scoreboard"] = {"variants": ["ratio", "projection"], "positions": ["step", "last_prompt"],
                               "rows": rows or [], "rule": rule}
    if validation is not None:
        entry["validation"] = validation
    return {"models": {model: entry}}


def by_key(result, figure, source="scoreboard", **key):
    found = [f for f in result["figures"] if f["figure"] == figure and f["source"] == source
             and all(f.get(k) == v for k, v in key.items())]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def three_seeds():
    return {
        0: {"recall": recall_file([row(specificity_auc=0.7, specificity_auc_ci=[0.65, 0.75], causal_spearman=0.3,
                                       break_auc=0.6, pathway_auc=0.55, sc_planted=0.8)], chosen=("projection", "step")),
            "world": {"pathways": {"direct": {"n": 30, "composed": 0.6, "shortcut": 0.3, "neither": 0.1,
                                              "n_composed": 18}}}},
        1: {"recall": recall_file([row(specificity_auc=0.8, specificity_auc_ci=[0.45, 0.9], causal_spearman=-0.1,
                                       break_auc=None, sc_planted=0.6)], chosen=("projection", "step")),
            "world": {"pathways": {"direct": {"n": 28, "composed": 0.5, "shortcut": 0.4, "neither": 0.1}}}},
        2: {"recall": recall_file([row(specificity_auc=0.6, specificity_auc_ci=None, causal_spearman=0.2,
                                       break_auc=0.7, sc_planted=0.7)], chosen=("ratio", "last_prompt")),
            "world": {"pathways": {"direct": {"n": 31, "composed": 0.7, "shortcut": 0.2, "neither": 0.1}}}},
    }


def test_every_seed_above_the_reference_is_robust(three_seeds):
    f = by_key(replicate(three_seeds), "specificity_auc", condition="direct", hop=1, variant="projection",
               position="last_prompt")
    assert f["per_seed"] == {"0": 0.7, "1": 0.8, "2": 0.6}
    assert f["mean"] == pytest.approx(0.7) and f["min"] == 0.6 and f["max"] == 0.8
    assert f["sd"] == pytest.approx(0.1)
    assert (f["reference"], f["n_above"], f["n_below"], f["n_defined"], f["n_seeds"]) == (0.5, 3, 0, 3, 3)
    assert f["agree"] is True and f["robust"] is True and f["sign"] == "above"
    # each seed's own CI: seed 0 lies wholly above 0.5, seed 1 straddles it, seed 2 has none
    assert f["ci_per_seed"] == {"0": [0.65, 0.75], "1": [0.45, 0.9], "2": None}
    assert (f["n_ci_above"], f["n_ci_below"]) == (1, 0)


def test_seeds_on_both_sides_disagree(three_seeds):
    f = by_key(replicate(three_seeds), "causal_spearman")
    assert f["reference"] == 0.0 and (f["n_above"], f["n_below"]) == (2, 1)
    assert f["agree"] is False and f["robust"] is False and f["sign"] is None
    assert f["mean"] == pytest.approx(0.4 / 3, abs=1e-6)  # rounded to 6 digits


def test_a_null_or_missing_figure_agrees_but_is_not_robust(three_seeds):
    result = replicate(three_seeds)
    null = by_key(result, "break_auc")  # null in seed 1
    assert null["per_seed"] == {"0": 0.6, "1": None, "2": 0.7}
    assert (null["n_defined"], null["n_seeds"], null["n_above"]) == (2, 3, 2)
    assert null["mean"] == pytest.approx(0.65)
    assert null["agree"] is True and null["robust"] is False
    missing = by_key(result, "pathway_auc")  # the key is only in seed 0's row
    assert missing["per_seed"] == {"0": 0.55, "1": None, "2": None}
    assert missing["sd"] is None and missing["agree"] is True and missing["robust"] is False
    assert not any(f["figure"] in ("n_own", "condition") for f in result["figures"])


def test_a_level_figure_gets_the_spread_but_no_sign(three_seeds):
    f = by_key(replicate(three_seeds), "sc_planted")
    assert f["reference"] is None and f["mean"] == pytest.approx(0.7)
    assert f["agree"] is None and f["robust"] is None and f["n_above"] is None


def test_a_value_on_the_reference_is_on_neither_side():
    per_seed = {s: {"recall": recall_file([row(specificity_auc=v)])} for s, v in ((0, 0.6), (1, 0.5))}
    f = by_key(replicate(per_seed), "specificity_auc")
    assert (f["n_above"], f["n_below"], f["agree"], f["robust"]) == (1, 0, False, False)


def test_references():
    assert [reference(n) for n in ("specificity_auc", "break_auc", "causal_spearman", "sc_difference",
                                   "delta2_difference", "composed_minus_shortcut", "sc_planted", "composed")] == \
        [0.5, 0.5, 0.0, 0.0, 0.0, 0.0, None, None]
    assert summarise([None, None], 0.5)["agree"] is None


def test_rule_choices_that_differ(three_seeds):
    result = replicate(three_seeds)
    assert result["rule_choices"] == {"0": {"variant": "projection", "position": "step"},
                                      "1": {"variant": "projection", "position": "step"},
                                      "2": {"variant": "ratio", "position": "last_prompt"}}
    assert result["same_choice_every_seed"] is False
    assert result["rule_configured"]["2"] == {"variant": "ratio", "position": "step"}
    three_seeds[2]["recall"] = recall_file([row(specificity_auc=0.6)], chosen=("projection", "step"))
    assert replicate(three_seeds)["same_choice_every_seed"] is True
    del three_seeds[2]["recall"]["models"]["world"]["scoreboard"]["rule"]["chosen"]
    assert replicate(three_seeds)["same_choice_every_seed"] is False  # a seed without a choice: not the same
    assert replicate({0: {"recall": recall_file()}, 1: {}})["same_choice_every_seed"] is None  # no rule anywhere


def test_validation_and_pathway_figures(three_seeds):
    planted = [0.6, 0.5, 0.2]
    for seed, value in zip(three_seeds, planted):
        three_seeds[seed]["recall"]["models"]["world"]["validation"] = {
            "direct": {"sc_shortcut_planted": value, "sc_composed": 0.3, "sc_difference_ci": [value - 0.4, value],
                       "delta2_heldout_bridge": 1.5, "delta2_heldout_subject": 1.2 + 0.1 * seed}}
    result = replicate(three_seeds)
    sc = by_key(result, "sc_difference", source="validation", condition="direct")
    assert sc["per_seed"] == pytest.approx({"0": 0.3, "1": 0.2, "2": -0.1})
    assert (sc["reference"], sc["n_above"], sc["n_below"], sc["agree"]) == (0.0, 2, 1, False)
    assert sc["ci_per_seed"]["0"] == pytest.approx([0.2, 0.6])
    assert (sc["n_ci_above"], sc["n_ci_below"]) == (2, 0)  # seed 2's CI [-0.2, 0.2] straddles 0
    delta = by_key(result, "delta2_difference", source="validation", hop=2)
    assert delta["per_seed"] == pytest.approx({"0": 0.3, "1": 0.2, "2": 0.1}) and delta["robust"] is True
    assert by_key(result, "delta2_heldout_bridge", source="validation")["reference"] is None
    comp = by_key(result, "composed_minus_shortcut", source="pathways", condition="direct")
    assert comp["per_seed"] == pytest.approx({"0": 0.3, "1": 0.1, "2": 0.5}) and comp["robust"] is True
    shares = by_key(result, "composed", source="pathways")
    assert shares["per_seed"] == {"0": 0.6, "1": 0.5, "2": 0.7} and shares["robust"] is None
    assert not any(f["figure"].startswith("n_") or f["figure"] == "n" for f in result["figures"])
    assert result["summary"]["by_source"]["pathways"] == {"n_figures": 1, "n_agree": 1, "n_robust": 1}


def test_older_and_partial_files_are_skipped():
    per_seed = {0: {"recall": {"models": {"world": {"conditions": {}}}}, "world": {"n_items": 3}},
                1: {"recall": {"models": {"world": {"scoreboard": {"rows": "not a list"}, "validation": []}}}},
                2: {"recall": {}, "world": {"pathways": {"direct": "junk"}}},
                3: {"recall": recall_file([row(specificity_auc=0.7, sc_planted="high", causal_spearman=float("nan"))])}}
    result = replicate(per_seed)
    assert [f["figure"] for f in result["figures"]] == ["specificity_auc", "causal_spearman"]  # file order
    f = by_key(result, "specificity_auc")
    assert f["per_seed"] == {"0": None, "1": None, "2": None, "3": 0.7} and f["robust"] is False
    assert by_key(result, "causal_spearman")["n_defined"] == 0
    assert result["same_choice_every_seed"] is None


def test_a_named_model_is_read(three_seeds):
    for files in three_seeds.values():
        files["recall"]["models"]["other"] = recall_file([row(specificity_auc=0.1)])["models"]["world"]
    assert by_key(replicate(three_seeds, "other"), "specificity_auc")["per_seed"] == {"0": 0.1, "1": 0.1, "2": 0.1}
    assert by_key(replicate(three_seeds), "specificity_auc")["per_seed"]["0"] == 0.7  # default: the first model


def test_html_has_a_table_per_figure_and_escapes_text(three_seeds):
    three_seeds[0]["recall"]["models"]["world"]["scoreboard"]["rows"].append(
        row(condition="<script>x</script>", specificity_auc=0.9))
    page = render_html(replicate(three_seeds))
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    for figure in ("specificity_auc", "causal_spearman", "break_auc", "composed_minus_shortcut"):
        assert f"<code>{figure}</code>" in page
    assert "projection × step" in page and "ratio × last_prompt" in page
    assert "Same choice in every seed: <b>no</b>" in page
    assert page.count("<table>") == 1 + len({(f["source"], f["figure"]) for f in replicate(three_seeds)["figures"]})


def test_seed_params_replace_the_seed_and_keep_only_the_world_model():
    config = {"seed": 3, "models": {"world": {"path": "world"}, "gpt2": {"path": "gpt2"}}, "world": {"people": 12}}
    nested = seed_params(config, 5, "world", {"path": "world", "dtype": "float32"})
    assert nested["seed"] == 5 and list(nested["models"]) == ["world"] and nested["world"] == {"people": 12}
    assert config["seed"] == 3 and len(config["models"]) == 2  # the run's own config is untouched
    full = Params().model_dump(mode="json")
    parse_params(seed_params(full, 9, "world", full["models"]["world"]))  # a valid params.yaml


def test_world_seeds_parameter():
    assert Params().validation.world_seeds == 3
    with pytest.raises(KnrecallError, match="validation.world_seeds"):
        parse_params({"validation": {"world_seeds": 1}})


# ------------------------------------------------------------------------------------------------------- CLI
def write_seed_files(tmp_path, per_seed):
    recall, world = [], []
    for seed, files in per_seed.items():
        for kind, paths in (("recall", recall), ("world", world)):
            path = tmp_path / f"seed-{seed}" / f"{kind}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(files.get(kind, {})))
            paths.append(str(path))
    return recall, world


def test_cli_end_to_end_without_torch(tmp_path, three_seeds):
    recall, world = write_seed_files(tmp_path, three_seeds)
    out, page = tmp_path / "out" / "validate_worlds.json", tmp_path / "out" / "index.html"
    argv = ["validate-worlds", "--seeds", "0", "1", "2", "--recall", *recall, "--world", *world, "--model", "world",
            "--out", str(out), "--html", str(page)]
    code = ("import sys; from knrecall.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["seeds"] == [0, 1, 2] and data["model"] == "world" and data["same_choice_every_seed"] is False
    assert by_key(data, "specificity_auc")["robust"] is True
    assert by_key(data, "composed", source="pathways")["per_seed"] == {"0": 0.6, "1": 0.5, "2": 0.7}
    assert page.read_text().startswith("<!doctype html>") and "Replication across worlds" in page.read_text()
    assert "validate-worlds: 3 seeds" in result.stderr
    assert not list(out.parent.glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("case, expected", [
    ("one seed", "give at least two --seeds"),
    ("counts", "give one --recall (and one --world) file per seed"),
    ("bad json", "not valid JSON"),
    ("missing", "file not found"),
    ("model", "no model 'nope' under 'models'"),
])
def test_cli_errors_are_one_line(tmp_path, knrecall_cmd, three_seeds, case, expected):
    recall, world = write_seed_files(tmp_path, three_seeds)
    seeds = ["0", "1", "2"]
    model = []
    if case == "one seed":
        seeds, recall, world = ["0"], recall[:1], world[:1]
    elif case == "counts":
        world = world[:2]
    elif case == "bad json":
        (tmp_path / "seed-1" / "recall.json").write_text("{nope")
    elif case == "missing":
        recall[2] = str(tmp_path / "absent.json")
    elif case == "model":
        model = ["--model", "nope"]
    out = tmp_path / "out.json"
    result = subprocess.run([*knrecall_cmd, "validate-worlds", "--seeds", *seeds, "--recall", *recall,
                             "--world", *world, *model, "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("knrecall: error: ") and expected in lines[0], result.stderr
    assert not out.exists()


# -------------------------------------------------------------------------------------------------- workflow
@pytest.mark.slow
def test_dry_run_plans_one_nested_run_per_seed_and_the_aggregate(tmp_path):
    project = copy_workflow(tmp_path / "proj", params={**TINY_PARAMS, "seed": 5, "validation": {"world_seeds": 3}})
    result = snakemake(project, "-n", "-p", "validate_worlds")
    assert scheduled_jobs(result.stdout) == {"validate_world": 3, "validate_worlds": 1}
    for seed in (5, 6, 7):  # seed, seed + 1, seed + 2, each a nested run in its own directory
        assert f"--directory results/validate/seed-{seed} " in result.stdout
        assert f'"seed":{seed}' in result.stdout
    assert "seed-8" not in result.stdout and "seed-4" not in result.stdout
    assert "--seeds 5 6 7" in result.stdout and "results/metrics/validate_worlds.json" in result.stdout
    # the default target does not include it
    assert not {"validate_world", "validate_worlds"} & set(scheduled_jobs(snakemake(project, "-n").stdout))


@pytest.mark.slow
def test_world_seeds_below_two_stop_with_one_line(tmp_path):
    project = copy_workflow(tmp_path / "proj")
    edit_params(project, "validation", "world_seeds", 1)
    result = snakemake(project, "-n", "validate_worlds", check=False)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert errors == ["knrecall: error: params.yaml: key 'validation.world_seeds': 1 is less than the minimum of 2"]


@pytest.mark.slow
def test_without_the_world_the_target_says_why(tmp_path):
    project = copy_workflow(tmp_path / "proj", params={**TINY_PARAMS, "dataset": {"source": "tfrkn",
                                                                                  "path": "data/tfrkn.json"}})
    assert scheduled_jobs(snakemake(project, "-n", "validate_worlds").stdout) == {"validate_worlds": 1}
    result = snakemake(project, "validate_worlds", "--cores", "1", check=False)
    assert result.returncode != 0
    log = (project / "results" / "logs" / "validate_worlds.log").read_text().strip().splitlines()
    assert log == ["knrecall: error: validate-worlds: give at least two --seeds (the workflow's target needs the "
                   "embedded world, dataset.source: world, and a model with path 'world')"]
    assert not (project / "results" / "metrics" / "validate_worlds.json").exists()


@pytest.mark.slow
def test_a_real_run_of_two_tiny_worlds(tmp_path, request):
    """About 80 s on 2 busy cores: each world generated, trained and measured in its own nested run. The seed-0
    world is the session's tiny reference run made again (same seed, same science parameters, another process and
    directory): its world, trained model and answers must be byte-identical to it (same seed, same results)."""
    # one attribution and one intervention shard per world (the shards are tested elsewhere): fewer jobs to start
    project = copy_workflow(tmp_path / "proj", params={**TINY_PARAMS, "validation": {"world_seeds": 2},
                                                       "attribution": {"shards": 1}, "interventions": {"shards": 1}})
    snakemake(project, "validate_worlds")
    results = project / "results"
    data = json.loads((results / "metrics" / "validate_worlds.json").read_text())
    assert data["seeds"] == [0, 1] and data["model"] == "world"
    items = []
    for seed in (0, 1):
        run = results / "validate" / f"seed-{seed}"
        nested = yaml.safe_load((run / "params.yaml").read_text())
        assert nested["seed"] == seed and list(nested["models"]) == ["world"]
        assert (run / ".snakemake" / "metadata").is_dir()  # its own Snakemake state, beside its own results
        assert not (run / "results" / "report").exists()  # only recall.json and world.json were asked for
        items.append((run / "results" / "world" / "items.json").read_text())
        assert (results / "logs" / f"validate_world_seed-{seed}.log").exists()
        recall = json.loads((run / "results" / "metrics" / "recall.json").read_text())["models"]["world"]
        board = recall["scoreboard"]
        first = board["rows"][0]
        f = by_key(data, "specificity_auc", condition=first["condition"], hop=first["hop"], variant=first["variant"],
                   position=first["position"])
        assert f["per_seed"][str(seed)] == first["specificity_auc"]
        assert data["rule_choices"][str(seed)] == board["rule"]["chosen"]
    assert items[0] != items[1]  # two different worlds
    rows = [f for f in data["figures"] if f["source"] == "scoreboard" and f["figure"] == "specificity_auc"]
    assert len(rows) == len(board["rows"]) and all(f["n_seeds"] == 2 for f in rows)
    assert data["summary"]["n_figures"] > 0 and isinstance(data["same_choice_every_seed"], bool)
    assert "Replication across worlds" in (results / "validate" / "index.html").read_text()
    assert not list((project / ".snakemake" / "locks").glob("*"))
    assert scheduled_jobs(snakemake(project, "-n", "validate_worlds").stdout) == {}  # nothing reruns

    # asked for only now, so that the other test process has meanwhile made it
    again, first = results / "validate" / "seed-0" / "results", request.getfixturevalue("tiny_reference") / "results"
    for path in ("world/corpus.jsonl", "world/items.json", "models/world/model.safetensors"):
        assert (again / path).read_bytes() == (first / path).read_bytes(), path
    for path in ("items.parquet", "predictions/world.parquet"):
        assert pl.read_parquet(again / path).equals(pl.read_parquet(first / path)), path


def test_the_subject_site_rows_are_replicated_as_their_own_sources(three_seeds):
    for seed, pathway in ((0, 0.62), (1, 0.58), (2, 0.41)):
        board = three_seeds[seed]["recall"]["models"]["world"]["scoreboard"]
        board["subject_site"] = {"items": 240, "rows": [row(variant="ratio", position="subject_last",
                                                            pathway_auc=pathway, causal_spearman=0.2)],
                                 "answer_site_rows": [row(variant="ratio", position="subject_last", pathway_auc=0.6)]}
    result = replicate(three_seeds)
    site = by_key(result, "pathway_auc", source="subject_site", condition="direct", hop=1, variant="ratio",
                  position="subject_last")
    assert site["per_seed"] == {"0": 0.62, "1": 0.58, "2": 0.41} and not site["agree"] and not site["robust"]
    assert by_key(result, "causal_spearman", source="subject_site", variant="ratio", position="subject_last")["robust"]
    usual = by_key(result, "pathway_auc", source="subject_site_usual", variant="ratio", position="subject_last")
    assert usual["robust"] and usual["sign"] == "above"
    assert result["summary"]["by_source"]["subject_site"]["n_robust"] == 1
    # the scoreboard's own rows are not mixed with them
    assert by_key(result, "pathway_auc", condition="direct", hop=1, variant="projection",
                  position="last_prompt")["per_seed"]["0"] == 0.55
    assert "Hop-1 KNs found at the subject" in render_html(result)
