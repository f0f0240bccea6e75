"""Subcommands that belong to no phase: `merge-metrics` (per-model metrics files into one), `tables`,
`timings`, `schema` and `check-params` (the parameter file).

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from knrecall.errors import KnrecallError


def cmd_merge_metrics(args: argparse.Namespace) -> None:
    from knrecall.io import write_json

    merged: dict = {}
    for path in args.inputs:  # several files of one model (its summary, its scoreboard) are merged key by key
        data = json.loads(Path(path).read_text())
        merged.setdefault(data["model"], {}).update(data)
    write_json({"models": merged}, args.out)


def add_merge_metrics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge-metrics", help="merge per-model summaries into one metrics JSON keyed by model")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge_metrics)


def cmd_tables(args: argparse.Namespace) -> None:
    from knrecall.tables import intervention_table, recall_table, validation_table

    printed = False
    for name, render in (("recall.json", recall_table), ("recall.json", validation_table),
                         ("interventions.json", intervention_table)):
        path = Path(args.metrics) / name
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KnrecallError(f"{path}: not valid JSON ({exc})") from None
        table = render(data)
        if table:
            print(f"{path} ({render.__name__.replace('_', ' ')}):\n\n{table}\n")
            printed = True
    if not printed:
        raise KnrecallError(f"{args.metrics}: neither recall.json nor interventions.json is there (run the workflow first)")


def add_tables(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tables", help="print the recall (Table-4 layout), validation and intervention tables")
    p.add_argument("--metrics", default="results/metrics", help="the folder with recall.json / interventions.json")
    p.set_defaults(func=cmd_tables)


def cmd_timings(args: argparse.Namespace) -> None:
    from knrecall.timings import job_records, timing_table

    print(f"per-rule wall times ({args.metadata}):\n\n{timing_table(job_records(args.metadata))}\n")


def add_timings(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("timings", help="per-rule wall times of the last run, from Snakemake's job records")
    p.add_argument("--metadata", default=".snakemake/metadata", help="Snakemake's metadata folder")
    p.set_defaults(func=cmd_timings)


def cmd_schema(args: argparse.Namespace) -> None:
    from knrecall.config import schema_yaml
    from knrecall.io import atomic_path

    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(schema_yaml())
    else:
        sys.stdout.write(schema_yaml())


def add_schema(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print or write the JSON Schema of params.yaml (YAML form)")
    p.add_argument("--out", help="file to write (default: stdout)")
    p.set_defaults(func=cmd_schema)


def cmd_check_params(args: argparse.Namespace) -> None:
    from knrecall.config import load_params

    load_params(args.path)
    print(f"{args.path}: ok")


def add_check_params(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-params", help="validate a params.yaml against the typed parameter model")
    p.add_argument("path", nargs="?", default="params.yaml")
    p.set_defaults(func=cmd_check_params)
