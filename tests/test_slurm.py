"""The tiny workflow on a real single-node SLURM cluster (localhost), through profiles/slurm, equals a local run.

Needs root: Debian's slurmctld, slurmd, slurm-client and munge are installed when missing (the test is skipped with
the reason where that is impossible). The daemons it starts are stopped when the test ends, whatever happened.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from conftest import ROOT
from slurm_cluster import SlurmCluster, Unavailable, ensure_installed
from workflow_helpers import copy_workflow, scheduled_jobs, snakemake, tool_env

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 600
GPU_RULES = {"attribute": 2, "intervene": 2, "causal_effects": 1, "subject_site": 1}  # rule -> its jobs in the tiny run
# the Snakefile's localrules (besides `all`): they run beside Snakemake, not as SLURM jobs
LOCAL_RULES = {"world_metrics", "attribution_metrics", "recall_metrics", "intervention_metrics"}
COMPARED_TABLES = ["kns/world.parquet", "recall/world/recall.parquet", "predictions/world.parquet"]
COMPARED_JSON = ["metrics/recall.json"]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    try:
        ensure_installed()
    except Unavailable as reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    cluster = SlurmCluster(log_dir=tmp_path_factory.mktemp("slurm-daemon-logs"))
    # a SIGTERM (e.g. from `timeout`) still tears the cluster down: it ends the test like Ctrl-C would
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            cluster.start()
        except Unavailable as reason:
            pytest.skip(f"no local SLURM cluster: {reason}")
        yield cluster
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def slurm_overrides(cluster: SlurmCluster) -> tuple[list[str], dict]:
    """profiles/slurm as it is, except what this test cluster needs changed, as command-line overrides.

    No account (without slurmdbd the plugin cannot validate one), the test partition, memory capped to the node,
    device cpu (no real GPU; the fake one is only scheduled), and the local profile's threads so that the numbers
    are computed exactly as in the local run (and fit the node's CPUs). Returns the overrides and, per rule, the
    CPUs, minutes and MB each SLURM job must then ask for (rule "*": any other rule; CPUs None: not checked).
    """
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    threads = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())["set-threads"]
    mem_cap = cluster.real_memory_mb // cluster.cpus

    def test_value(key, val):
        return "cpu" if key == "device" else min(val, mem_cap) if key == "mem_mb" else val

    defaults = {k: test_value(k, v) for k, v in profile["default-resources"].items() if k != "slurm_account"}
    defaults["slurm_partition"] = cluster.partition
    per_rule = {rule: {k: test_value(k, v) for k, v in entries.items()}
                for rule, entries in profile["set-resources"].items()}
    expected = {rule: {"cpus": threads.get(rule),
                       "runtime": per_rule.get(rule, {}).get("runtime", defaults["runtime"]),
                       "mem_mb": per_rule.get(rule, {}).get("mem_mb", defaults["mem_mb"])}
                for rule in ["*", *threads, *per_rule]}
    overrides = ["--workflow-profile", "profiles/slurm",
                 "--default-resources", *[f"{k}={v}" for k, v in defaults.items()],
                 "--set-resources", *[f"{rule}:{k}={v}" for rule, kv in per_rule.items() for k, v in kv.items()],
                 "--set-threads", *[f"{rule}={n}" for rule, n in threads.items()],
                 "--slurm-status-command", "squeue",
                 "--slurm-init-seconds-before-status-checks", "2",
                 "--seconds-between-status-checks", "1",
                 "--slurm-keep-successful-logs",
                 "--verbose"]
    return overrides, expected


def assert_same_json(a, b, where="") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        # metrics JSON rounds to 4 decimals: two values a rounding boundary apart differ by one unit in the last one
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1.01e-4), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_json(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_tiny_workflow_on_slurm_equals_a_local_run(slurm_cluster, request, tmp_path):
    started = time.monotonic()

    project = copy_workflow(tmp_path / "slurm")
    planned = scheduled_jobs(snakemake(project, "-n").stdout)
    assert planned["attribute"] == planned["intervene"] == 2
    overrides, expected = slurm_overrides(slurm_cluster)
    cmd = [sys.executable, "-m", "snakemake", *overrides]
    slurm_started = time.monotonic()
    try:
        result = subprocess.run(cmd, cwd=project, env=tool_env(), capture_output=True, text=True,
                                timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        output = "".join(out.decode(errors="replace") if isinstance(out, bytes) else out or ""
                         for out in (expired.stdout, expired.stderr))
        pytest.fail(f"the SLURM run took over {RUN_TIMEOUT_S} s:\n{output[-5000:]}\n{slurm_cluster.logs()}")
    slurm_s = time.monotonic() - slurm_started
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{log[-5000:]}\n{slurm_cluster.logs()}"

    # What slurmctld itself recorded for this run's jobs (it keeps finished jobs for MinJobAge = 1 h).
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = [job for job in slurm_cluster.jobs() if job.get("JobName") == run_id]
    rules = [re.match(r"rule_([a-z_]+?)(?:_wildcards_|$)", job["Comment"]).group(1) for job in jobs]
    # every job of the plan ran as a SLURM job, but the local rules, which ran beside Snakemake
    assert dict(Counter(rules)) == {rule: n for rule, n in planned.items() if rule not in LOCAL_RULES}, (rules, planned)
    assert LOCAL_RULES <= set(planned) and all(f"localrule {rule}:" in log for rule in LOCAL_RULES)
    assert {job["JobState"] for job in jobs} == {"COMPLETED"}, jobs
    for rule, job in zip(rules, jobs):
        gpus = job.get("TresPerJob", "")
        if rule in GPU_RULES:
            assert gpus == "gres:gpu:1", (rule, job)
        else:
            assert "gpu" not in gpus, (rule, job)
        assert job["Partition"] == slurm_cluster.partition and job["Account"] == "(null)", job
        want = expected.get(rule, expected["*"])
        if want["cpus"] is not None:
            assert int(job["CPUs/Task"]) == want["cpus"], (rule, job)  # set-threads -> --cpus-per-task
        assert job["TimeLimit"] == f"{want['runtime'] // 60:02d}:{want['runtime'] % 60:02d}:00", (rule, job)
        assert job["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, job)
    # ...and the sbatch command lines Snakemake sent (--verbose)
    sbatch = [line for line in log.splitlines() if "sbatch call:" in line]
    assert len(sbatch) == len(jobs)
    for rule, n_jobs in GPU_RULES.items():
        calls = [line for line in sbatch if f"rule_{rule}_wildcards" in line]
        assert len(calls) == n_jobs and all(" --gpus=1" in line for line in calls), calls
    assert not [line for line in sbatch
                if "--gpus" in line and not re.search(r"rule_(attribute|intervene|causal_effects|subject_site)_", line)]

    # the session's local run (profiles/default, picked up by itself), asked for only now: meanwhile the other test
    # process has made it
    local = request.getfixturevalue("tiny_reference")
    inexact = []
    for name in COMPARED_TABLES:
        want, got = pl.read_parquet(local / "results" / name), pl.read_parquet(project / "results" / name)
        assert got.height > 0, name
        if not got.equals(want):
            inexact.append(name)
            # the profiles' measure batch sizes differ (16 here, 64 locally): activations then differ in their last
            # fp32 digits (5e-8 at 0.09 on an AVX2-only CPU), and a KN score, a ratio of such small activations,
            # carries that as ~1e-5 relative; a wrong KN, position or item would differ in the first digits
            assert_frame_equal(got, want, check_exact=False, rel_tol=1e-4, abs_tol=1e-5)
    for name in COMPARED_JSON:
        assert_same_json(json.loads((project / "results" / name).read_text()),
                         json.loads((local / "results" / name).read_text()), name)

    total_s = time.monotonic() - started
    job_s = sum(seconds(job["RunTime"]) for job in jobs)
    print(f"\nSLURM test wall time: {total_s:.1f} s (the local reference is the session's tiny run; SLURM run {slurm_s:.1f} s: "
          f"{len(jobs)} SLURM jobs running {job_s} s in all on {slurm_cluster.cpus} CPUs; "
          f"tables equal {'within 1e-5: ' + ', '.join(inexact) if inexact else 'exactly'})")


def seconds(runtime: str) -> int:
    """SLURM's [D-]HH:MM:SS as seconds."""
    days, _, clock = runtime.rpartition("-")
    h, m, s = (int(part) for part in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s
