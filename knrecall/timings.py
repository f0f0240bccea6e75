"""Where the time of a workflow run went: per-rule wall times from Snakemake's own job records.

Snakemake keeps one JSON record per output file in `.snakemake/metadata/` (the file name is the base64 of the
output path), with the job's `rule`, `job_hash`, `starttime` and `endtime` (Unix seconds). A job with several outputs
has one record per output, whose times differ by microseconds to milliseconds (the report's 15 outputs end up to
4 ms apart), so a job is one run of records with the same (rule, job_hash) whose time spans overlap, from the
earliest start to the latest end; a record of the same job from an earlier run, whose span does not overlap, is a
job of its own. The records are the
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
    spans: dict[tuple, list[tuple[float, float]]] = {}
    directory = Path(metadata_dir)
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        try:
            output = base64.b64decode(path.name, altchars=b"+_").decode()
            record = json.loads(path.read_text())
        except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, OSError):
            continue  # not a job record (Snakemake keeps other small files there too)
        if not output.startswith(under) or record.get("starttime") is None or record.get("endtime") is None:
            continue
        spans.setdefault((record.get("rule"), record.get("job_hash")), []).append(
            (record["starttime"], record["endtime"]))
    jobs: list[dict[str, Any]] = []
    for (rule, _), times in spans.items():
        merged: list[list[float]] = []
        for start, end in sorted(times):
            if merged and start <= merged[-1][1]:  # overlaps the job so far: another output of it
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        jobs += [{"rule": rule, "start": start, "end": end, "seconds": end - start} for start, end in merged]
    return sorted(jobs, key=lambda job: job["start"])


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
