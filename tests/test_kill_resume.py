"""Kill the workflow with SIGKILL mid-run, rerun it, and get what an uninterrupted run gets (issue 7).

One project is run without interruption (the reference). A second copy is run as a chain of crashes: each run is
started like a user would (`snakemake`, the default profile) in its own session and, at a chosen point, Snakemake
and all its job processes get SIGKILL together (a power cut, an OOM kill of the whole tree, a killed CI runner):

1. while the `train_world_model` job runs;
2. after the first `attribute` shard has finished, while the second one runs (the run gives `attribute` its rule
   default `gpu=1`, as on a one-GPU machine, so that the two shards run one after the other);
3. while both `intervene` shards run (that run goes `--until intervene`, as a user may run one phase, so that the two
   shards are the only jobs left to start once the KNs are selected and always run side by side);

then a last plain run finishes the workflow. A kill point is the job's process being alive, not a line in its log:
the tiny model computes for milliseconds after its imports, too short a window to catch reliably on a busy machine
(the job is killed before its output is written either way; a kill during the write is covered below). After each
kill, every output present under results/ must be complete (readable and equal to the reference's), the jobs that
were killed must be run again by a later run while a shard Snakemake had already recorded as done must not, and the
temporary files the kills left behind must never be read (their access times are checked). Since a kill seldom
lands in the milliseconds of a write, the test also plants, after each kill, a half-written `.name.XXXX.tmp` beside
every output of the killed jobs, as a kill during the write would leave it. The finished project must equal the
reference and be up to date.

After a SIGKILL Snakemake leaves its lock behind, so the next run stops with "Directory cannot be locked"; as a
user would, the test then runs `snakemake --unlock` and starts again (and prints that it did).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from base64 import urlsafe_b64decode
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from workflow_helpers import copy_workflow, snakemake, tool_env

pytestmark = pytest.mark.slow

POLL_SECONDS = 0.02
KILL_POINT_TIMEOUT = 300  # seconds for one run to reach its kill point (a shared 2-core machine can be slow)
LOCKED = "Directory cannot be locked"

# Columns and keys that hold wall-clock times, which no two runs share.
TIMING_COLUMNS = {"seconds"}
TIMING_KEYS = {"train_seconds", "train_tokens_per_second", "tokens_per_second", "seconds_per_epoch", "seconds_per_prompt",
               "seconds", "epoch_seconds"}
INTERVENTION_KEYS = ["case_id", "condition", "intervention", "control_seed"]

FINAL_OUTPUTS = ["results/predictions/world.parquet", "results/kns/world.parquet",
                 "results/recall/world/recall.parquet", "results/recall/world/steps.parquet",
                 "results/metrics/recall.json", "results/metrics/interventions.json",
                 "results/metrics/attribution.json", "results/metrics/world.json",
                 *(f"results/attribution/world/shard-000{i}{ext}" for i in (0, 1)
                   for ext in (".parquet", ".layers.parquet")),
                 *(f"results/interventions/world/shard-000{i}.parquet" for i in (0, 1)),
                 "results/report/index.html"]


# ------------------------------------------------------------------------------------------- process inspection
@dataclass(frozen=True)
class Job:
    """A live `python -m knrecall ...` process: its subcommand, the output path it was given (`--out`/`--out-dir`),
    and every output file it was given (`--out`, `--layers-out`, `--summary`)."""
    command: str
    out: str
    files: tuple[str, ...] = ()


def _group_processes(pgid: int) -> list[tuple[int, str, list[str]]]:
    """(pid, state, argv) of every process in process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            found.append((int(entry.name), fields[0], argv))
    return found


def _live_jobs(pgid: int) -> set[Job]:
    jobs = set()
    for _, state, argv in _group_processes(pgid):
        if state == "Z" or argv[1:3] != ["-m", "knrecall"] or len(argv) < 5:
            continue
        command = " ".join(argv[3:5]) if argv[3] == "world" else argv[3]
        flag = "--out-dir" if "--out-dir" in argv else "--out"
        files = tuple(argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--out", "--layers-out", "--summary"))
        jobs.add(Job(command, argv[argv.index(flag) + 1] if flag in argv else "", files))
    return jobs


def _wait_until_group_is_dead(pgid: int) -> None:
    deadline = time.monotonic() + 30
    while any(state != "Z" for _, state, _ in _group_processes(pgid)):
        assert time.monotonic() < deadline, f"processes of group {pgid} survived SIGKILL: {_group_processes(pgid)}"
        time.sleep(POLL_SECONDS)


# ------------------------------------------------------------------------------------------------- kill points
def _training(project: Path, jobs: set[Job]) -> bool:
    return any(job.command == "world train" for job in jobs)


def _one_shard_attributed(project: Path, jobs: set[Job]) -> bool:
    """One shard's two outputs exist and the other shard's job runs."""
    folder = project / "results" / "attribution" / "world"
    done = [i for i in (0, 1) if (folder / f"shard-000{i}.parquet").exists()
            and (folder / f"shard-000{i}.layers.parquet").exists()]
    running = [job for job in jobs if job.command == "attribute"]
    return len(done) == 1 and len(running) == 1 and running[0].out.endswith(f"shard-000{1 - done[0]}.parquet")


def _intervening(project: Path, jobs: set[Job]) -> bool:
    """Both intervene shards' jobs run."""
    return len({job.out for job in jobs if job.command == "intervene"}) == 2


@dataclass
class KillPoint:
    name: str
    reached: Callable[[Path, set[Job]], bool]  # (project, live jobs) -> is this the moment to kill
    killed_command: str  # the subcommand that must have been running when the kill came
    args: tuple[str, ...] = ()


KILL_POINTS = [
    KillPoint("while the world model's training job runs", _training, "world train"),
    KillPoint("after the first attribute shard finished, while the second runs", _one_shard_attributed,
              "attribute", ("--set-resources", "attribute:gpu=1")),
    KillPoint("while both intervene shards run", _intervening, "intervene", ("--until", "intervene")),
]


# ---------------------------------------------------------------------------------------------- file checks
def _relative(path: Path, project: Path) -> str:
    return path.relative_to(project).as_posix()


def _is_temporary(path: Path, results: Path) -> bool:
    """A write in progress: `.name.XXXX.tmp` beside an output, or anything inside a `.name.XXXX` staging folder."""
    return any(part.startswith(".") for part in path.relative_to(results).parts)


def _table(path: Path) -> pl.DataFrame:
    frame = pl.from_arrow(pq.read_table(path))
    return frame.drop([c for c in frame.columns if c in TIMING_COLUMNS])


def _same_table(rel: str, got: Path, want: Path) -> str | None:
    """None when the two Parquet files hold the same data (times aside), else what differs."""
    a, b = _table(got), _table(want)
    if rel.startswith("results/interventions/") and "/shard-" in rel:  # sets of rows, probabilities within 1e-5
        a, b = a.sort(INTERVENTION_KEYS), b.sort(INTERVENTION_KEYS)
    try:
        assert_frame_equal(a, b, check_exact=False, rel_tol=0, abs_tol=1e-5)
    except AssertionError as exc:
        return f"{rel}: differs from the reference: {str(exc)[:800]}"
    return None


def _json_differences(got, want, skip: set[str], where: str = "") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} in only one of the two"]
        return [d for key in want if key not in skip
                for d in _json_differences(got[key], want[key], skip, f"{where}/{key}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} values, the reference has {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _json_differences(g, w, skip, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)):
        return [] if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9) else [f"{where}: {got} != {want}"]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def _check_file(path: Path, rel: str, reference: Path) -> str | None:
    """None when `path` is a complete output (readable; equal to the reference's where the data is comparable)."""
    try:
        if path.suffix == ".parquet":
            pq.read_table(path)
            return _same_table(rel, path, reference / rel) if (reference / rel).exists() else None
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if not (reference / rel).exists():
                return None
            want = json.loads((reference / rel).read_text())
            return "; ".join(_json_differences(data, want, TIMING_KEYS, rel)) or None
        if path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            got, want = load_file(path), load_file(reference / rel)
            if set(got) != set(want) or any((got[k] != want[k]).any() for k in want):
                return f"{rel}: weights differ from the reference"
    except Exception as exc:  # noqa: BLE001 - any failure to read is what is being looked for
        return f"{rel}: not a complete file ({type(exc).__name__}: {exc})"
    return None


def _inspect(project: Path, reference: Path) -> tuple[list[str], list[Path]]:
    """(problems with the outputs present, the temporary files left behind); temporaries are only stat'ed."""
    results = project / "results"
    problems, temporaries = [], []
    for path in sorted(results.rglob("*")):
        if not path.is_file():
            continue
        if _is_temporary(path, results):
            temporaries.append(path)
        elif path.parent.name != "logs":
            problem = _check_file(path, _relative(path, project), reference)
            if problem:
                problems.append(problem)
    return problems, temporaries


def _plant_partial_writes(project: Path, reference: Path, jobs: set[Job], tag: str) -> list[Path]:
    """What a kill in the middle of a write leaves: `.name.XXXX.tmp` beside each output of the killed jobs, holding
    the first half of the complete file. (A real kill rarely lands in the few milliseconds of a write.)"""
    planted = []
    for rel in sorted({rel for job in jobs for rel in job.files}):
        target = project / rel
        partial = target.parent / f".{target.name}.{tag}.tmp"
        data = (reference / rel).read_bytes()
        partial.write_bytes(data[: len(data) // 2])
        planted.append(partial)
    return planted


def _mark_unread(paths: list[Path]) -> dict[Path, int]:
    """Set each file's access time well before its change time, so that any later read moves it (relatime)."""
    marked = {}
    for path in paths:
        st = path.stat()
        os.utime(path, ns=(st.st_mtime_ns - 3_600_000_000_000, st.st_mtime_ns))
        marked[path] = path.stat().st_atime_ns
    return marked


def _atime_sees_reads(folder: Path) -> bool:
    probe = folder / "atime-probe"
    probe.write_text("probe")
    before = _mark_unread([probe])[probe]
    probe.read_text()
    seen = probe.stat().st_atime_ns != before
    probe.unlink()
    return seen


# ------------------------------------------------------------------------------------------------ running
def _executed_outputs(output: str) -> list[str]:
    """The output files of every job a Snakemake run started (from its job blocks)."""
    outputs, in_job = [], False
    for line in output.splitlines():
        stripped = line.strip()
        if re.fullmatch(r"(local)?rule \w+:", stripped):
            in_job = True
        elif in_job and stripped.startswith("output:"):
            outputs += [p.strip() for p in stripped.split(":", 1)[1].split(",")]
            in_job = False
    return outputs


@dataclass
class Kill:
    point: KillPoint
    killed: set[Job]
    problems: list[str]
    temporaries: list[Path]
    recorded_done: list[str] = field(default_factory=list)  # shard outputs Snakemake had finished before the kill
    rerun_outputs: list[str] = field(default_factory=list)  # what the runs after it executed


@dataclass
class Chain:
    project: Path
    kills: list[Kill]
    unlocks: int
    final_output: str
    marked: dict[Path, int]
    atime_works: bool
    seconds: float


def _unlock_if_locked(project: Path, output: str) -> bool:
    if LOCKED not in output:
        return False
    snakemake(project, "--unlock")
    return True


def _run_until(project: Path, point: KillPoint, transcript: Path) -> tuple[set[Job], str, int]:
    """Start `snakemake` (unlocking once if a previous kill left the lock), SIGKILL its session at `point`.

    Returns the knrecall jobs alive at the kill, the run's output, and how many unlocks were needed."""
    unlocks = 0
    while True:
        with transcript.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "snakemake", *point.args], cwd=project, env=tool_env(),
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + KILL_POINT_TIMEOUT
        try:
            while True:
                jobs = _live_jobs(proc.pid)
                if point.reached(project, jobs):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    _wait_until_group_is_dead(proc.pid)
                    return jobs, transcript.read_text(), unlocks
                if proc.poll() is not None:
                    output = transcript.read_text()
                    if unlocks == 0 and _unlock_if_locked(project, output):
                        unlocks += 1
                        break
                    pytest.fail(f"snakemake exited ({proc.returncode}) before the kill point '{point.name}' was "
                                f"reached; a job may have been too quick to catch. Output:\n{output[-4000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"kill point '{point.name}' not reached within {KILL_POINT_TIMEOUT} s; live jobs "
                                f"{jobs}; output:\n{transcript.read_text()[-4000:]}")
                time.sleep(POLL_SECONDS)
        finally:  # never leave a run behind (a failure above, Ctrl-C)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _finish(project: Path) -> tuple[str, int]:
    result = snakemake(project, check=False)
    output = result.stdout + result.stderr
    unlocks = 0
    if result.returncode != 0 and _unlock_if_locked(project, output):
        unlocks = 1
        result = snakemake(project, check=False)
        output = result.stdout + result.stderr
    assert result.returncode == 0, f"the run after the last kill failed ({result.returncode}):\n{output[-4000:]}"
    return output, unlocks


def _recorded_shards(project: Path) -> list[str]:
    """The attribution shards present after a kill that Snakemake does not mark incomplete (jobs it recorded done)."""
    incomplete = {urlsafe_b64decode(p.name.lstrip("@")).decode(errors="replace")
                  for p in (project / ".snakemake" / "incomplete").glob("*") if p.is_file()}
    shards = (f"results/attribution/world/shard-000{i}.parquet" for i in (0, 1))
    return [rel for rel in shards if (project / rel).exists() and rel not in incomplete]


# ------------------------------------------------------------------------------------------------ fixtures
# Session-scoped (computed once per test process): with pytest-xdist this module's tests may be interleaved with
# other modules' in one worker, and a module-scoped chain would then be set up again each time they come back.
@pytest.fixture(scope="session")
def projects(tiny_reference, tmp_path_factory):
    """The reference (the session's uninterrupted tiny run: same code, same params) and the to-be-killed project."""
    base = tmp_path_factory.mktemp("kill-resume")
    return tiny_reference, copy_workflow(base / "killed"), base


@pytest.fixture(scope="session")
def reference(projects):
    project, _, _ = projects
    return project


@pytest.fixture(scope="session")
def chain(projects, reference) -> Chain:
    _, project, base = projects
    started = time.monotonic()
    kills: list[Kill] = []
    unlocks = 0
    marked: dict[Path, int] = {}
    for index, point in enumerate(KILL_POINTS):
        jobs, _, needed = _run_until(project, point, base / f"run-{index}.log")
        unlocks += needed
        for kill in kills:
            kill.rerun_outputs += _executed_outputs((base / f"run-{index}.log").read_text())
        assert any(job.command == point.killed_command for job in jobs), (point.name, jobs)
        problems, temporaries = _inspect(project, reference)
        temporaries += _plant_partial_writes(project, reference, jobs, f"kill{index}")
        kill = Kill(point, jobs, problems, temporaries, _recorded_shards(project))
        marked.update(_mark_unread([t for t in temporaries if t not in marked]))
        kills.append(kill)
        print(f"[kill-resume] killed {point.name} ({time.monotonic() - started:.0f} s): "
              f"{', '.join(sorted(f'{job.command} {job.out}' for job in jobs))}; "
              f"{len(kill.temporaries)} temporary file(s) left or planted")
    final_output, needed = _finish(project)
    unlocks += needed
    for kill in kills:
        kill.rerun_outputs += _executed_outputs(final_output)
    seconds = time.monotonic() - started
    print(f"[kill-resume] {len(kills)} kills and the finishing run: {seconds:.0f} s; "
          f"'snakemake --unlock' was needed {unlocks} time(s) after a SIGKILL")
    return Chain(project, kills, unlocks, final_output, marked, _atime_sees_reads(base), seconds)


# --------------------------------------------------------------------------------------------------- tests
def test_every_kill_hit_a_running_job(chain):
    for kill in chain.kills:
        assert any(job.command == kill.point.killed_command for job in kill.killed), kill.point.name
    # the attribution kill left one shard finished (and recorded by Snakemake), the other one running
    attribution = next(kill for kill in chain.kills if kill.point.killed_command == "attribute")
    running = {job.out for job in attribution.killed if job.command == "attribute"}
    done = set(attribution.recorded_done)
    assert len(done) == 1 and len(running) == 1 and not running & done, (done, running)


def test_no_partial_output_is_left_by_a_kill(chain):
    for kill in chain.kills:
        assert kill.problems == [], f"after the kill {kill.point.name}:\n" + "\n".join(kill.problems)


def test_later_runs_redo_the_killed_jobs_and_keep_finished_ones(chain):
    """A killed job is run again by a later run (the next one, or the last when the next one, going `--until
    intervene`, does not need it); a shard Snakemake recorded as finished is never run again."""
    for kill in chain.kills:
        for job in kill.killed:
            assert any(out == job.out or out.startswith(job.out + "/") for out in kill.rerun_outputs), (
                f"{job} was killed {kill.point.name} but no later run ran it again: {kill.rerun_outputs}")
        for done in kill.recorded_done:
            assert done not in kill.rerun_outputs, f"{done} was done before the kill {kill.point.name} but was redone"


def test_temporary_files_left_by_kills_are_never_read(chain):
    if not chain.atime_works:
        pytest.skip("this file system does not update access times on read (noatime)")
    left = [path for path in chain.marked if path.exists()]
    assert left, "no temporary file is left to check"
    read = [str(path) for path in left if path.stat().st_atime_ns != chain.marked[path]]
    assert read == [], f"temporary files of killed jobs were read by a later job: {read}"


def test_resumed_outputs_equal_the_uninterrupted_run(chain, reference):
    problems = []
    for rel in FINAL_OUTPUTS:
        got, want = chain.project / rel, reference / rel
        assert got.exists(), f"{rel} is missing after the resumed run"
        if rel.endswith(".parquet"):
            problems.append(_same_table(rel, got, want))
        elif rel.endswith(".json"):
            problems += _json_differences(json.loads(got.read_text()), json.loads(want.read_text()), TIMING_KEYS, rel)
    problems = [p for p in problems if p]
    assert problems == [], "\n".join(problems)
    # every output in results/ (not only the final ones) is complete and equal to the reference's
    problems, _ = _inspect(chain.project, reference)
    assert problems == [], "\n".join(problems)


def test_resumed_project_is_up_to_date(chain):
    result = snakemake(chain.project, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]


def test_intervention_metrics_are_reproducible(chain, reference):
    rel = "results/metrics/interventions.json"
    problems = _json_differences(json.loads((chain.project / rel).read_text()),
                                 json.loads((reference / rel).read_text()), TIMING_KEYS, rel)
    assert problems == [], "\n".join(problems[:10])
