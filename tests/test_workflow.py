"""The Snakemake workflow: lint, format, dry run, a tiny real run, and what reruns after a change."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT
from workflow_helpers import copy_project, copy_workflow, edit_params, scheduled_jobs, snakemake, tool_env

pytestmark = pytest.mark.slow

RECALL_RULES = {"measure", "recall", "subject_site", "scoreboard", "recall_metrics", "report"}
INTERVENTION_RULES = {"intervene", "intervention_summary", "intervention_metrics", "report"}
CAUSAL_RULES = {"causal_effects", "subject_site", "scoreboard", "recall_metrics", "report"}
ANSWER_RULES = {"answer", "world_metrics"} | RECALL_RULES | CAUSAL_RULES
ATTRIBUTION_RULES = {"attribute", "select_kns", "attribution_metrics"} | RECALL_RULES | INTERVENTION_RULES | CAUSAL_RULES
ALL_RULES = {"generate_world", "train_world_model", "import_items"} | ANSWER_RULES | ATTRIBUTION_RULES


def test_lint_is_clean():
    result = snakemake(ROOT, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=ROOT,
                            capture_output=True, text=True, env=tool_env())
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_of_the_default_params_plans_every_rule(tmp_path):
    project = copy_workflow(tmp_path / "proj", params={})
    result = snakemake(project, "-n")
    assert scheduled_jobs(result.stdout) == {rule: 2 if rule in ("attribute", "intervene") else 1 for rule in ALL_RULES}


def test_paper_params_plan_three_models_side_by_side(tmp_path):
    project = copy_workflow(tmp_path / "proj", params={})
    shutil.copy2(ROOT / "params.paper.yaml", project / "params.yaml")
    (project / "data").mkdir()
    shutil.copy2(ROOT / "tests" / "fixtures" / "tfrkn_real.json", project / "data" / "tfrkn.json")
    result = snakemake(project, "-n")
    per_model = {"answer": 1, "attribute": 2, "select_kns": 1, "measure": 1, "recall": 1, "intervene": 2,
                 "intervention_summary": 1, "causal_effects": 1, "subject_site": 1, "scoreboard": 1}
    once = {"import_items": 1, "attribution_metrics": 1, "recall_metrics": 1, "intervention_metrics": 1, "report": 1}
    assert scheduled_jobs(result.stdout) == {**{rule: 3 * n for rule, n in per_model.items()}, **once}
    for name in ("llama2-7b", "llama3-8b", "mistral-7b"):
        assert f"results/report/figures/{name}/accuracy.png" in result.stdout


def test_bad_params_stop_with_one_line_naming_the_key(tmp_path):
    project = copy_workflow(tmp_path / "proj")
    edit_params(project, "world", "people", "lots")
    result = snakemake(project, "-n", check=False)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert errors == ["knrecall: error: params.yaml: key 'world.people': 'lots' is not of type 'integer'"]
    edit_params(project, "world", "people", 12)
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "colour: blue\n")
    result = snakemake(project, "-n", check=False)
    assert result.returncode != 0 and "unknown key 'colour'" in result.stderr


@pytest.fixture(scope="module")
def tiny_run(tiny_reference, tmp_path_factory):
    """This module's own copy of the session's tiny reference run, which other test processes read meanwhile: the
    tests here edit its parameters (and restore them) and write into it."""
    return copy_project(tiny_reference, tmp_path_factory.mktemp("tiny-run") / "proj")


def test_tiny_run_writes_every_output(tiny_run):
    results = tiny_run / "results"
    metrics = json.loads((results / "metrics" / "world.json").read_text())
    for key in ("onehop_accuracy", "shortcut_planted_accuracy", "composed_accuracy", "n_items", "model_parameters",
                "train_seconds"):
        assert key in metrics
    assert set(metrics["twohop_accuracy"]) >= {"train_subjects", "heldout_subjects", "heldout_bridges"}
    by_condition = metrics["by_condition"]
    assert list(by_condition) == ["direct", "zero_shot_cot", "few_shot_cot", "conflict_hop1", "conflict_hop2"]
    assert "chain_names_bridge" in by_condition["few_shot_cot"] and "follows_context" in by_condition["conflict_hop2"]
    corpus_kinds = {json.loads(line)["kind"] for line in (results / "world" / "corpus.jsonl").read_text().splitlines()}
    assert {"cot_question", "context_question"} <= corpus_kinds
    items = pl.read_parquet(results / "items.parquet")
    assert metrics["n_items"] == items.height > 0
    assert set(items["source"]) == {"world"} and set(items["split"]) == {"train_subject", "heldout_subject", "heldout_bridge"}
    predictions = pq.read_table(results / "predictions" / "world.parquet")
    assert predictions.schema.field("paraphrase").type == "int16"
    assert predictions.schema.field("gold_first_token_prob").type == "float"
    meta = json.loads(predictions.schema.metadata[b"knrecall"])
    assert meta["model"]["path"] == "results/models/world" and meta["schema_version"] == 1
    assert "torch" in meta["libraries"]
    frame = pl.from_arrow(predictions)
    assert frame.filter(pl.col("kind") == "two_hop").height == 5 * items.height
    assert frame["gold_first_token_prob"].is_between(0, 1).all()
    # the world model reloads through the plain Hugging Face path
    model = AutoModelForCausalLM.from_pretrained(results / "models" / "world")
    tokenizer = AutoTokenizer.from_pretrained(results / "models" / "world")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.intermediate_size == 32
    assert len(tokenizer) == model.config.vocab_size
    log_lines = (results / "models" / "world" / "train_log.jsonl").read_text().splitlines()
    assert json.loads(log_lines[-1])["epoch"] == 1
    assert "train world model" in (results / "logs" / "train_world_model.log").read_text()


def test_tiny_run_attributes_every_prompt(tiny_run):
    results = tiny_run / "results"
    items = pl.read_parquet(results / "items.parquet")
    layers = pl.concat([pl.read_parquet(results / "attribution" / "world" / f"shard-000{i}.layers.parquet") for i in (0, 1)])
    facts = {(tuple(q), a) for col, ans in (("fact1_query", "fact1_ans"), ("fact2_query", "fact2_ans"))
             for q, a in zip(items[col].to_list(), items[ans].to_list())}
    expected_prompts = sum(len(questions) for questions, _ in facts)
    assert layers.select("prompt", "answer").unique().height == expected_prompts
    assert set(layers["layer"].unique()) == {0}  # the tiny world model has one layer
    kns = pl.read_parquet(results / "kns" / "world.parquet")
    assert set(kns["level"]) <= {"coarse", "refined"} and kns.height > 0
    meta = json.loads(pq.read_schema(results / "kns" / "world.parquet").metadata[b"knrecall"])
    assert meta["thresholds"]["coarse_threshold"] == 0.2 and meta["thresholds"]["refine_fraction"] == 0.5
    metrics = json.loads((results / "metrics" / "attribution.json").read_text())["models"]["world"]
    assert metrics["prompts_attributed"] == expected_prompts
    assert metrics["kns_per_fact"]["mean"] >= 0 and metrics["completeness_error_p95"] is not None


def test_tiny_run_writes_recall_metrics(tiny_run):
    results = tiny_run / "results"
    items = pl.read_parquet(results / "items.parquet")
    recall = pl.read_parquet(results / "recall" / "world" / "recall.parquet")
    conditions = ["direct", "zero_shot_cot", "few_shot_cot", "conflict_hop1", "conflict_hop2"]
    assert recall.height == items.height * len(conditions) * 2  # every item, condition and hop
    assert set(recall["category"]) <= {"TT", "TF", "FT", "FF", "no_kns", "undecided"}
    steps = pl.read_parquet(results / "recall" / "world" / "steps.parquet")
    direct = steps.filter(pl.col("condition") == "direct")
    assert (direct["hop1_position"] == direct["hop2_position"]).all() and direct["hop1_found"].all()
    metrics = json.loads((results / "metrics" / "recall.json").read_text())["models"]["world"]
    assert list(metrics["conditions"]) == conditions
    entry = metrics["conditions"]["direct"]
    for key in ("accuracy", "TT", "TF", "FT", "FF", "MH", "SC", "delta1_mean", "delta2_mean"):
        assert key in entry and f"{key}_ci" in entry
    shares = [entry[k] for k in ("TT", "TF", "FT", "FF")]
    assert abs(sum(shares) - 1) < 2e-4  # each share is rounded to 4 decimals
    assert "sc_shortcut_planted" in metrics["validation"]["direct"]
    assert metrics["measurement"] == {"variant": "projection", "position": "step"}  # the default
    assert set(metrics["paper_reading"]["conditions"]) == set(conditions)
    # every score variant x position, per item, condition and hop, and the scoreboard over them
    scores = pl.read_parquet(results / "recall" / "world" / "scores.parquet")
    assert scores.height == recall.height * 4 * 3
    assert set(scores["variant"]) == {"ratio", "difference", "projection", "ratio_of_sums"}
    assert set(scores["position"]) == {"step", "last_prompt", "subject_last"}
    reported = scores.filter((pl.col("variant") == "projection") & (pl.col("position") == "step")).sort("case_id", "condition", "hop")
    assert reported["delta"].equals(recall.sort("case_id", "condition", "hop")["delta"])
    assert steps["subject_found"].all()  # every world question names its subject
    causal = pl.read_parquet(results / "interventions" / "world" / "causal.parquet")
    assert causal.height == items.height * len(conditions) * 2
    assert causal["gold_prob_base"].is_between(0, 1).all()
    board = metrics["scoreboard"]
    assert len(board["rows"]) == len(conditions) * 2 * 4 * 3
    assert {"specificity_auc", "causal_spearman", "break_auc", "pathway_auc", "sc_difference"} <= set(board["rows"][0])
    assert board["rule"]["configured"] == {"variant": "projection", "position": "step"} and board["rule"]["text"]
    profile = pl.read_parquet(results / "recall" / "world" / "profile.parquet")
    assert profile.height > 0 and set(profile["kind"]) == {"item", "null"} and (profile["offset"] <= 0).all()


def test_tiny_run_scores_the_subject_site_variant(tiny_run):
    results = tiny_run / "results"
    items = pl.read_parquet(results / "items.parquet")
    site = json.loads((results / "metrics" / "recall.json").read_text())["models"]["world"]["scoreboard"]["subject_site"]
    assert site["items"] == 12 and site["pathway_items"] == items["shortcut_conflicting"].sum()  # TINY_PARAMS
    assert "case_ids" not in site and site["thresholds"]["prompts_attributed"] > 0
    conditions = 5  # the tiny run answers under all five conditions; hop 1 only, every variant x position
    assert len(site["rows"]) == len(site["answer_site_rows"]) == conditions * 4 * 3
    assert {r["hop"] for r in site["rows"] + site["answer_site_rows"]} == {1}
    assert all(r["sc_difference"] is None for r in site["rows"])
    causal = pl.read_parquet(results / "interventions" / "world" / "subject_causal.parquet")
    assert set(causal["hop"]) == {1} and causal["case_id"].n_unique() == site["items"]
    # the tiny world model has ONE layer: what its FFN writes at the subject cannot reach the answer position, so
    # IG at the subject is exactly zero and no fact has KNs there (the usual KNs exist); the method says so
    assert site["thresholds"]["completeness_error_median"] == 0 and site["facts_without_kns"] == site["thresholds"]["facts"]
    assert pl.read_parquet(results / "kns" / "world.subject.parquet").height == 0
    assert pl.read_parquet(results / "kns" / "world.parquet").height > 0
    assert causal["n_kns"].max() == 0 and causal["effect_kn"].is_null().all()


def test_the_scoreboard_rule_runs_without_torch(tiny_run, tmp_path):
    """The scoreboard only reads tables: its command (as the rule runs it) must not load torch, whose import is most
    of a small job's wall time."""
    planned = snakemake(tiny_run, "-n", "-p", "--forcerun", "scoreboard", "--allowed-rules", "scoreboard", "--",
                        "results/recall/world/scoreboard.json").stdout
    command = next(line for line in planned.splitlines() if "-m knrecall scoreboard" in line)
    argv = shlex.split(command.split("-m knrecall ", 1)[1].split(" > ", 1)[0])
    out = tmp_path / "scoreboard.json"
    argv[argv.index("--out") + 1] = str(out)
    code = ("import sys; from knrecall.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=tiny_run, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == json.loads((tiny_run / "results/recall/world/scoreboard.json").read_text())


def test_tiny_run_writes_intervention_metrics(tiny_run):
    results = tiny_run / "results"
    items = pl.read_parquet(results / "items.parquet")
    rows = pl.concat([pl.read_parquet(results / "interventions" / "world" / f"shard-000{i}.parquet") for i in (0, 1)])
    conditions = ["direct", "zero_shot_cot", "few_shot_cot"]
    base = rows.filter(pl.col("kind") == "base")
    intervened = items.filter(~pl.col("shortcut_conflicting")).height  # pathway-revealing items are left out
    assert base.height == intervened * len(conditions)  # every item once per condition, across the two shards
    assert set(rows["policy"]) == {"last_prompt"} and rows["gold_prob"].is_between(0, 1).all()
    random_rows = rows.filter(pl.col("kind") == "random")
    assert set(random_rows["control_seed"]) == {0, 1}
    kn = rows.filter(pl.col("kind") == "kn").select("case_id", "condition", "intervention", "n_neurons")
    matched = random_rows.select("case_id", "condition", pl.col("intervention").str.strip_prefix("random_"), "n_neurons")
    assert matched.join(kn, on=["case_id", "condition", "intervention"], suffix="_kn").filter(
        pl.col("n_neurons") != pl.col("n_neurons_kn")).height == 0  # a control has as many neurons as its KN set
    metrics = json.loads((results / "metrics" / "interventions.json").read_text())["models"]["world"]
    assert metrics["policy"] == "last_prompt" and list(metrics["conditions"]) == conditions
    entry = metrics["conditions"]["direct"]
    assert entry["base"]["n_items"] == intervened
    for name in ("enhance_hop1", "suppress_hop1", "enhance_hop2", "suppress_hop2", "enhance_both", "suppress_both"):
        assert {"accuracy", "delta_accuracy", "delta_accuracy_ci", "delta_gold_prob", "delta_gold_prob_ci",
                "kn_vs_random_ratio", "random"} <= set(entry[name])


def test_tiny_run_writes_the_report(tiny_run):
    from knrecall.report import FIGURES

    report = tiny_run / "results" / "report"
    page = (report / "index.html").read_text()
    for heading in ("Run manifest", "Accuracy", "Knowledge neurons", "Recall: KN scores per condition",
                    "Recall categories (the paper's Table 4 layout)", "Conflicting context", "Interventions",
                    "Ground-truth validation (the world)", "Can these numbers be trusted?", "IG diagnostics",
                    "Parameters"):
        assert f"<h3>{heading}</h3>" in page or f"<h2>{heading}</h2>" in page, heading
    for figure in FIGURES:
        png = report / "figures" / "world" / f"{figure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f'src="figures/world/{figure}.png"' in page
    assert page.count("<figcaption>") == len(FIGURES) and "Source: results/" in page
    accuracy = pl.read_csv(report / "data" / "accuracy.csv")
    assert accuracy.columns == ["model", "condition", "accuracy", "low", "high"] and accuracy.height == 5
    shares = pl.read_csv(report / "data" / "recall_shares.csv")
    assert (shares.select(pl.sum_horizontal("TT", "TF", "FT", "FF")).to_series() - 1).abs().max() < 2e-4  # rounded
    assert pl.read_csv(report / "data" / "interventions.csv").height == 3 * 6


def test_snakemake_report_builds(tiny_run, tmp_path):
    out = tmp_path / "snakemake-report.html"
    snakemake(tiny_run, "--report", str(out))
    text = out.read_text()
    assert out.stat().st_size > 100_000  # the self-contained page with the figures embedded
    assert "kn_layers.png" in text and "deltas.png" in text


def _chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


def _render(browser: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `page` (no network, a throw-away profile); its console goes to stderr."""
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=5000", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


def _page_state(browser: str, page: Path, profile: Path) -> tuple[dict[str, str], list[str]]:
    """The `#image-check` attributes after load, and the console messages Chromium logged."""
    result = _render(browser, page, profile, "--dump-dom")
    tag = re.search(r'<div id="image-check"[^>]*>', result.stdout)
    attributes = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', tag.group(0))) if tag else {}
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    return attributes, console


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (`make test` installs Debian's chromium when it can)")
    # the check itself can fail: a copy of the page with a missing image and a script error is caught
    broken = tiny_run / "results" / "report" / "broken-check.html"
    broken.write_text((tiny_run / "results" / "report" / "index.html").read_text()
                      .replace("figures/world/accuracy.png", "figures/world/missing.png")
                      .replace("</body>", "<script>console.error('deliberate'); undefinedFunction();</script></body>"))
    try:
        attributes, console = _page_state(browser, broken, tmp_path / "profile-broken")
    finally:
        broken.unlink()
    assert attributes.get("data-broken") == "1" and any("deliberate" in line for line in console)

    page = tiny_run / "results" / "report" / "index.html"
    attributes, console = _page_state(browser, page, tmp_path / "profile")
    from knrecall.report import FIGURES

    assert attributes == {"data-broken": "0", "data-images": str(len(FIGURES))}
    assert console == []
    shot = ROOT / "test-artifacts" / "report.png"
    shot.parent.mkdir(exist_ok=True)
    _render(browser, page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,6000")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _shard_dependent_outputs(results: Path) -> dict:
    """What must not depend on the shard counts: the KN sets (sorted) and the intervention rows."""
    keys = ["fact_id", "level", "paraphrase", "layer", "neuron"]
    order = ["case_id", "condition", "intervention", "control_seed"]
    return {
        "kns": pl.read_parquet(results / "kns" / "world.parquet").sort(keys, nulls_last=True),
        "interventions": pl.concat([pl.read_parquet(p) for p in sorted((results / "interventions" / "world")
                                                                         .glob("shard-*.parquet"))])
                           .sort(order, nulls_last=True),
        "attribution_shards": len(list((results / "attribution" / "world").glob("shard-*.layers.parquet"))),
        "intervention_shards": len(list((results / "interventions" / "world").glob("shard-*.parquet"))),
    }


def _sharded_targets(shards: int) -> list[str]:
    """What the shard counts touch: the KNs (selected from the attribution shards) and the intervention shards."""
    return ["results/kns/world.parquet", *(f"results/interventions/world/shard-{i:04d}.parquet" for i in range(shards))]


def test_shard_counts_do_not_matter(tiny_run, tmp_path):
    """The tiny run (2 attribution and 2 intervention shards) copied, rerun with 3 and 3, then with 1 and 1, each
    time up to the KNs and the intervention shards: only the sharded rules and the KN selection rerun (never the
    training or the answers), the shards of a larger count are removed once a smaller count's run succeeds, and the
    KN sets are equal for 1, 2 and 3 shards, the intervention rows too (gold_prob up to float rounding, as other batch
    compositions round differently). Everything after them reads the KN sets, not the shards. (Same seed, same
    results in two separate runs: the seed-0 world of tests/test_validate_worlds.py is compared with this run.)"""
    other = copy_project(tiny_run, tmp_path / "proj")
    by_shards = {2: _shard_dependent_outputs(other / "results")}
    for shards in (3, 1):
        edit_params(other, "attribution", "shards", shards)
        edit_params(other, "interventions", "shards", shards)
        rerun = snakemake(other, *_sharded_targets(shards))
        log = rerun.stdout + rerun.stderr
        ran = set(re.findall(r"^(?:local)?rule (\w+):", log, flags=re.M))
        assert ran == {"attribute", "select_kns", "intervene"}, ran
        by_shards[shards] = _shard_dependent_outputs(other / "results")
    # the shards 0001-0002 of the 3-shard run are removed once the 1-shard run succeeds (not left for DVC to version)
    assert "results/attribution/world/shard-0002.layers.parquet (a shard of an earlier run" in rerun.stderr
    assert "results/interventions/world/shard-0001.parquet (a shard of an earlier run" in rerun.stderr
    reference = by_shards[2]
    for shards, outputs in by_shards.items():
        assert outputs["attribution_shards"] == outputs["intervention_shards"] == shards
        kns = outputs["kns"]
        assert kns.drop("attribution").equals(reference["kns"].drop("attribution")), shards
        assert (kns["attribution"] - reference["kns"]["attribution"]).abs().max() < 1e-5, shards
        rows = outputs["interventions"]
        assert rows.drop("gold_prob").equals(reference["interventions"].drop("gold_prob")), shards
        assert (rows["gold_prob"] - reference["interventions"]["gold_prob"]).abs().max() < 1e-5, shards


def test_second_run_reruns_nothing(tiny_run):
    assert scheduled_jobs(snakemake(tiny_run, "-n").stdout) == {}


def test_runtime_knobs_rerun_nothing(tiny_run):
    result = snakemake(tiny_run, "-n", "--cores", "1", "--set-threads", "train_world_model=1", "answer=1", "attribute=2",
                       "measure=1", "intervene=2", "--set-resources", "answer:batch_size=3", "answer:device=cpu",
                       "attribute:max_rows=7", "measure:batch_size=2", "intervene:batch_size=5")
    assert scheduled_jobs(result.stdout) == {}


@pytest.mark.parametrize(
    "block, key, value, expected",
    [
        ("answer", "max_new_tokens", 5, ANSWER_RULES | INTERVENTION_RULES),
        ("kns", "refine_fraction", 0.6, {"select_kns", "attribution_metrics"} | RECALL_RULES | INTERVENTION_RULES
         | CAUSAL_RULES),
        ("recall", "null_per_fact", 3, RECALL_RULES),
        ("recall", "null_quantile", 0.9, {"recall", "scoreboard", "recall_metrics", "report"}),
        ("recall", "delta", "difference", {"recall", "scoreboard", "recall_metrics", "report"}),
        ("recall", "position", "last_prompt", {"recall", "scoreboard", "recall_metrics", "report"}),
        ("recall", "profile_items", 3, RECALL_RULES),
        ("interventions", "causal_random_seeds", 2, CAUSAL_RULES),
        ("interventions", "enhance_factor", 3.0, INTERVENTION_RULES),
        ("interventions", "position_policy", "all", INTERVENTION_RULES),
        ("recall", "bootstrap_resamples", 200, {"recall", "scoreboard", "recall_metrics", "intervention_summary",
                                               "intervention_metrics", "report"}),
        ("attribution", "steps", 4, ATTRIBUTION_RULES),
        ("attribution", "neuron", "pre_activation", ATTRIBUTION_RULES),
        ("world_model", "epochs", 2, {"train_world_model"} | ANSWER_RULES | ATTRIBUTION_RULES),
        ("world", "shortcut_fraction", 0.25, ALL_RULES),
    ],
)
def test_science_params_rerun_exactly_their_dependents(tiny_run, block, key, value, expected, tmp_path):
    project = copy_project(tiny_run, tmp_path / "proj")
    edit_params(project, block, key, value)
    assert set(scheduled_jobs(snakemake(project, "-n").stdout)) == expected


# one output of each rule whose params are checked below
RULE_OUTPUTS = {"answer": "results/predictions/world.parquet", "attribute": "results/attribution/world/shard-0000.parquet",
                "select_kns": "results/kns/world.parquet", "measure": "results/recall/world/activations.parquet",
                "recall": "results/recall/world/recall.parquet", "intervene": "results/interventions/world/shard-0000.parquet",
                "intervention_summary": "results/interventions/world/summary.json",
                "causal_effects": "results/interventions/world/causal.parquet",
                "scoreboard": "results/recall/world/scoreboard.json", "report": "results/report/index.html"}


def test_the_neuron_definition_is_a_param_of_exactly_the_rules_that_read_neurons(tiny_run):
    """attribution.neuron is in the params of attribute, of select_kns (which records it), and of every other rule
    that loads a model and reads or scales neurons (measure, causal_effects, intervene); besides them only of the
    report, which shows every parameter. Not of answer (it loads the model but reads no neuron) nor of the rules
    that only read files. A dry run allowed to run one rule only schedules it exactly when its own params changed
    (otherwise every rule after attribute would be scheduled for its updated inputs)."""
    original = (tiny_run / "params.yaml").read_text()
    try:
        edit_params(tiny_run, "attribution", "neuron", "pre_activation")
        rerun = {rule for rule, output in RULE_OUTPUTS.items()
                 if scheduled_jobs(snakemake(tiny_run, "-n", "--allowed-rules", rule, "--", output).stdout)}
    finally:
        (tiny_run / "params.yaml").write_text(original)
    assert rerun == {"attribute", "select_kns", "measure", "intervene", "causal_effects", "report"}


def test_a_run_with_pre_activation_neurons(tiny_run, tmp_path):
    """The workflow with `attribution.neuron: pre_activation` (on a copy of the tiny run) through every rule that
    reads or scales neurons: the KN file records the definition, the later phases accept it, and a second run has
    nothing to do."""
    project = tmp_path / "proj"
    shutil.copytree(tiny_run, project, symlinks=True)
    edit_params(project, "attribution", "neuron", "pre_activation")
    targets = ["results/metrics/attribution.json", "results/recall/world/activations.parquet",
               "results/interventions/world/causal.parquet", "results/interventions/world/shard-0000.parquet",
               "results/interventions/world/shard-0001.parquet"]
    snakemake(project, *targets)
    meta = json.loads(pq.read_schema(project / "results" / "kns" / "world.parquet").metadata[b"knrecall"])
    assert meta["thresholds"]["neuron"] == "pre_activation"
    assert meta["params"]["attribution"]["neuron"] == "pre_activation"
    summary = json.loads((project / "results" / "metrics" / "attribution.json").read_text())
    assert summary["models"]["world"]["thresholds"]["neuron"] == "pre_activation"
    for path in targets[1:]:
        assert pl.read_parquet(project / path).height > 0, path
    assert scheduled_jobs(snakemake(project, "-n", *targets).stdout) == {}
