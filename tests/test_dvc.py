"""DVC regression: repro + push, a fresh clone + pull has nothing to rerun, and one edited parameter reruns exactly
its dependents.

The project is a copy of the session's tiny reference run (results and Snakemake's records included): `dvc repro`
runs the stage's real command, `snakemake --profile profiles/default`, which finds every output up to date, and DVC
then versions what that run made. (The workflow run itself is tested by the reference's own tests.)"""

import json
import sys

import pytest

from conftest import ROOT
from workflow_helpers import copy_project, edit_params, run, scheduled_jobs, snakemake

pytestmark = pytest.mark.slow

GIT = ["git", "-c", "user.name=knrecall-test", "-c", "user.email=test@knrecall.invalid"]


def dvc(cwd, *args):
    return run([sys.executable, "-m", "dvc", *args], cwd)


def test_push_clone_pull_then_nothing_to_do(tiny_reference, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    project = copy_project(tiny_reference, tmp_path / "proj")
    (project / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    run(["git", "init", "-q"], project)
    dvc(project, "init", "-q")
    dvc(project, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "workflow"], project)

    repro = dvc(project, "repro")
    assert "Nothing to be done" in repro.stdout + repro.stderr  # the stage's snakemake ran and found it all done
    metrics = json.loads((project / "results" / "metrics" / "world.json").read_text())
    assert metrics["n_items"] > 0
    shown = dvc(project, "metrics", "show").stdout
    for name in ("world", "attribution", "recall", "interventions"):
        assert f"results/metrics/{name}.json" in shown
    assert "onehop_accuracy" in shown and "n_items" in shown
    plots = dvc(project, "plots", "show", "--json").stdout
    assert "two-hop accuracy per condition" in plots and "accuracy change per intervention" in plots
    dvc(project, "push")
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "results"], project)
    assert "dvc.lock" in run(["git", "ls-files"], project).stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "results").exists()
    dvc(clone, "pull")
    assert json.loads((clone / "results" / "metrics" / "world.json").read_text()) == metrics
    assert scheduled_jobs(snakemake(clone, "-n").stdout) == {}
    assert "up to date" in dvc(clone, "status").stdout

    edit_params(clone, "answer", "max_new_tokens", 5)
    recall = {"measure", "recall", "causal_effects", "subject_site", "scoreboard", "recall_metrics", "report"}
    interventions = {"intervene", "intervention_summary", "intervention_metrics"}
    assert set(scheduled_jobs(snakemake(clone, "-n").stdout)) == {"answer", "world_metrics"} | recall | interventions
    assert "answer" in dvc(clone, "status").stdout

    edit_params(clone, "answer", "max_new_tokens", 3)
    edit_params(clone, "world_model", "learning_rate", 0.001)
    downstream = {"answer", "world_metrics", "attribute", "select_kns", "attribution_metrics"} | recall | interventions
    assert set(scheduled_jobs(snakemake(clone, "-n").stdout)) == {"train_world_model"} | downstream
