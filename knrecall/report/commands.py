"""The report phase's subcommand: `report`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from knrecall.cliutil import parse_json
from knrecall.errors import KnrecallError


def cmd_report(args: argparse.Namespace) -> None:
    from knrecall.report.build import build_report

    params = parse_json(args.params, "report")
    if not isinstance(params, dict):
        raise KnrecallError("--params for report: expected a JSON object (the full parameters)")
    path = build_report(Path(args.results), Path(args.out_dir), args.models, params, args.dataset)
    logging.info("report -> %s", path)


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="results/report/index.html with figures and CSV series, from the outputs")
    p.add_argument("--results", default="results", help="the workflow's results folder")
    p.add_argument("--models", nargs="+", required=True, help="model names (as in params.yaml)")
    p.add_argument("--params", required=True, help="JSON of all parameters (shown, and fingerprinted)")
    p.add_argument("--dataset", default="world", help="a description of the dataset (shown in the manifest)")
    p.add_argument("--out-dir", required=True, help="the report folder (index.html, figures/, data/)")
    p.set_defaults(func=cmd_report)
