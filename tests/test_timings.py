"""`knrecall timings`: per-rule wall times from Snakemake's job records (`knrecall/timings.py`)."""

import base64
import json

from conftest import run_cli
from knrecall.timings import job_records, timing_table


def _record(folder, output: str, rule: str, job_hash: int, start: float, end: float) -> None:
    name = base64.b64encode(output.encode(), altchars=b"+_").decode()
    (folder / name).write_text(json.dumps({"rule": rule, "job_hash": job_hash, "starttime": start, "endtime": end}))


def test_a_job_is_its_outputs_records_whose_times_overlap(tmp_path):
    folder = tmp_path / "metadata"
    folder.mkdir()
    # one report job: many outputs, ends a few milliseconds apart (as Snakemake records them)
    for i, end in enumerate((58.012, 58.012, 58.016, 58.016)):
        _record(folder, f"results/report/figure-{i}.png", "report", 101, 51.644 + i * 1e-4, end)
    # two shards of one rule: two jobs (two hashes), side by side
    _record(folder, "results/attribution/shard-0000.parquet", "attribute", 7, 10.0, 40.0)
    _record(folder, "results/attribution/shard-0000.layers.parquet", "attribute", 7, 10.0, 40.0)
    _record(folder, "results/attribution/shard-0001.parquet", "attribute", 8, 11.0, 45.0)
    # the same job in an earlier run, an output still current from then: a job of its own
    _record(folder, "results/old.parquet", "report", 101, 1.0, 2.0)
    # not under results/, and a file that is no record
    _record(folder, "elsewhere/x", "report", 101, 51.0, 59.0)
    (folder / "not-a-record").write_text("{")
    jobs = job_records(folder)
    assert [(job["rule"], round(job["seconds"], 3)) for job in jobs] == [
        ("report", 1.0), ("attribute", 30.0), ("attribute", 34.0), ("report", 6.372)]
    table = timing_table(jobs)
    assert "| report | 2 | 7.4 | 6.4 |" in table and "| attribute | 2 | 64.0 | 34.0 |" in table
    assert "| all jobs, first start to last end | 4 | 57.0 | |" in table
    result = run_cli(["timings", "--metadata", str(folder)])
    assert result.returncode == 0 and "| attribute | 2 | 64.0 | 34.0 |" in result.stdout
    assert "no Snakemake job records" in run_cli(["timings", "--metadata", str(tmp_path / "none")]).stdout
