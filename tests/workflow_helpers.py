"""Run the real Snakemake workflow (and DVC) in a scratch directory, as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, TINY_PARAMS

WORKFLOW_FILES = ["Snakefile", "rules", "schemas", "profiles", "envs", "knrecall", "report", "params.yaml", "dvc.yaml",
                  ".dvcignore"]


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", *args], cwd, check)


def copy_workflow(dest: Path, params: dict | None = None) -> Path:
    """A standalone copy of the workflow with `params` (default: the tiny test world) as params.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in (params or TINY_PARAMS).items():
        full[key] = {**full[key], **value} if isinstance(value, dict) else value
    (dest / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    return dest


def copy_project(src: Path, dest: Path) -> Path:
    """A copy of a finished project (its results and Snakemake's records included, its lock not), file times kept, so
    that Snakemake finds the copy exactly as up to date as the original."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "__pycache__"))
    return dest


def edit_params(project: Path, block: str, key: str, value) -> None:
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data[block][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def scheduled_jobs(dry_run_output: str) -> dict[str, int]:
    """The `Job stats` table of a dry run, as {rule: count} (without `all`)."""
    lines = dry_run_output.splitlines()
    if "Nothing to be done" in dry_run_output:
        return {}
    start = lines.index("Job stats:") + 3
    jobs: dict[str, int] = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    jobs.pop("all", None)
    return jobs
