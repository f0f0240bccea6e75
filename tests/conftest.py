import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes on two cores: one torch thread each (idle OpenMP threads spin, so two threads per process
    # would make them fight), set before torch is imported. Subprocesses inherit it; the workflow's rules still set
    # their own thread counts.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# A world and a model small enough to generate, train and answer in seconds.
TINY_PARAMS = {
    "seed": 0,
    "world": {"people": 12, "cities": 6, "countries": 3, "companies": 4, "languages": 2, "currencies": 2,
              "heldout_subject_fraction": 0.3, "heldout_bridge_fraction": 0.2, "shortcut_fraction": 0.5,
              "cot_fraction": 0.5, "context_fraction": 0.5, "context_min_per_relation": 3, "few_shot_prompts": 2},
    "world_model": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2, "epochs": 1,
                    "batch_size": 64, "learning_rate": 0.002, "weight_decay": 0.1, "warmup_steps": 2},
    "answer": {"conditions": ["direct", "zero_shot_cot", "few_shot_cot", "conflict_hop1", "conflict_hop2"],
               "max_new_tokens": 3, "cot_max_new_tokens": 6},
    "interventions": {"random_seeds": 2},
    "validation": {"subject_site_items": 12},  # the subject-site variant on a few items (the tiny model has 1 layer)
}


@pytest.fixture
def knrecall_cmd():
    """The CLI as a subprocess argv prefix, with the venv's interpreter."""
    return [sys.executable, "-m", "knrecall"]


LOG_FORMAT = "%(asctime)s knrecall %(levelname)s %(message)s"  # as knrecall.cli.main formats its log lines


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    """`python -m knrecall ARGV`, run in this process: its exit status, stdout and stderr (log lines included, as the
    command line writes them). For the CLI tests where a new process adds nothing but its ~5 s of torch and
    transformers imports; a few tests still run the real command line in a fresh process (the entry point, a clean
    environment, nothing printed at import time). The test process's torch threads and random state are restored."""
    import contextlib
    import io
    import logging

    import torch

    from knrecall.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    placeholder = logging.NullHandler()  # main()'s logging.basicConfig adds no handler of its own while root has one
    level, threads, rng = root.level, torch.get_num_threads(), torch.random.get_rng_state()
    root.addHandler(placeholder)
    root.addHandler(handler)
    root.setLevel(logging.WARNING if {"-q", "--quiet"} & set(argv) else logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse: --help, a usage error
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        root.removeHandler(handler)
        root.removeHandler(placeholder)
        root.setLevel(level)
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    """One uninterrupted run of the tiny workflow (TINY_PARAMS, profiles/default), shared by every test that
    inspects such a run or compares with one (the workflow, kill/resume and SLURM tests): it runs once per test
    session, whichever test process asks first (the others wait for it on a file lock in the session's shared
    temporary directory). Other test processes read it at the same time: never edit or write into it; copy it first
    (`workflow_helpers.copy_project`)."""
    from filelock import FileLock

    from workflow_helpers import copy_workflow, snakemake

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/, this session's only
    project, done = shared / "tiny-reference" / "proj", shared / "tiny-reference" / "done"
    with FileLock(str(shared / "tiny-reference.lock")):
        if not done.exists():
            if project.exists():  # a run that failed in another test process: start again
                shutil.rmtree(project)
            snakemake(copy_workflow(project))
            done.touch()
    return project


# With pytest-xdist (`make test` runs two test processes), the tests are sent to the processes a module at a time
# (xdist's "loadscope", so module fixtures are built once), in the order collected here, the slow workflow modules
# first, so that neither process is left with a long one at the end (xdist would otherwise reorder the modules by
# their number of tests, which puts the one-test workflow modules last). The first two make no use of the other's
# work: the SLURM test asks for the shared tiny reference run only after its own run, and the kill/resume test makes
# it; the validate_worlds test asks for it after its own run too, and the workflow and DVC tests copy it.
SLOW_FIRST = ["test_slurm.py", "test_kill_resume.py", "test_workflow.py", "test_validate_worlds.py",
              "test_two_models.py", "test_dvc.py"]


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item.nodeid), len(rank)))  # stable: the rest keep their order


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # plain pytest: nothing to schedule
    pass
else:
    def pytest_xdist_make_scheduler(config, log):
        config.option.loadscopereorder = False  # keep the collection order above
        return LoadScopeScheduling(config, log)
