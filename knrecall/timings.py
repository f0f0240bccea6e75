"""Where the time of a workflow run went: per-rule wall times from Snakemake's own job records.

Snakemake keeps one JSON record per output file in `.snakemake/metadata/` (the file name is the base64 of the
output path), with the job's `rule`, `starttime` and `endtime` (Unix seconds). A job with several outputs has one
record per output, all with the same end time (their start times differ by microseconds), so a job is one distinct
(rule, job_hash, endtime), starting at the earliest of its records' start times. The records are the
latest run of every output, so after a run that reran only some rules the table mixes that run's jobs with the
earlier jobs whose outputs are still current, which is what the results on disk cost.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any


def job_records(metadata_dir: str | Path, under: str = "results/") -> list[dict[str, Any]]:
    """One {rule, start, end, seconds} per distinct job that wrote an output under `under`."""
    jobs: dict[tuple, dict[str, Any]] = {}
    directory = Path(metadata_dir)
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        try:
            output = base64.b64decode(path.name, altchars=b"+_").decode()
            record = json.loads(path.read_text())
        except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, OSError):
            continue  # not a job record (Snakemake keeps other small files there too)
        if not output.startswith(under) or record.get("starttime") is None or record.get("endtime") is None:
            continue
        key = (record.get("rule"), record.get("job_hash"), record["endtime"])
        start = min(record["starttime"], jobs[key]["start"]) if key in jobs else record["starttime"]
        jobs[key] = {"rule": record.get("rule"), "start": start, "end": record["endtime"],
                     "seconds": record["endtime"] - start}
    return sorted(jobs.values(), key=lambda job: job["start"])


def timing_table(jobs: list[dict[str, Any]]) -> str:
    """Markdown: per rule (in order of first start) the jobs, their summed and longest wall time; then the span
    from the first job's start to the last job's end."""
    if not jobs:
        return "no Snakemake job records found (run the workflow first)"
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    lines = ["| rule | jobs | wall s (sum) | longest job s |", "| --- | --- | --- | --- |"]
    for rule, rule_jobs in by_rule.items():
        total = sum(job["seconds"] for job in rule_jobs)
        longest = max(job["seconds"] for job in rule_jobs)
        lines.append(f"| {rule} | {len(rule_jobs)} | {total:.1f} | {longest:.1f} |")
    span = max(job["end"] for job in jobs) - min(job["start"] for job in jobs)
    lines.append(f"| all jobs, first start to last end | {len(jobs)} | {span:.1f} | |")
    return "\n".join(lines)
