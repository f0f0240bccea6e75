"""The data phase's subcommand: `data import`.

Each `add_*` registers one subcommand on the top-level parser (`knrecall.cli`); each `cmd_*` runs it, importing
the phase lazily so that `--help` stays fast."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path



def cmd_data_import(args: argparse.Namespace) -> None:
    from knrecall.data.importers import run_import

    count = run_import(Path(args.input), args.format, Path(args.out))
    logging.info("imported %d items from %s -> %s", count, args.input, args.out)


def add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets: import TFRKN / MQuAKE / JSON Lines into items.parquet")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    p = data_sub.add_parser("import", help="import a dataset file into the items table")
    p.add_argument("--input", required=True, help="dataset file (.json or .jsonl)")
    p.add_argument("--format", default="auto", choices=["auto", "tfrkn", "mquake", "jsonl"])
    p.add_argument("--out", required=True, help="items.parquet")
    p.set_defaults(func=cmd_data_import)
