"""Command line: one subcommand per workflow rule (`python -m knrecall --help`).

Each subcommand parses its arguments, calls one phase, and writes its outputs atomically. Science parameters
arrive as JSON (`--params`) validated against the same typed model as `params.yaml`; runtime knobs (threads,
batch size, device) are plain flags. Input problems end in one line on stderr and exit status 2.

This module only builds the top-level parser and dispatches: every phase registers its own subcommands
(`knrecall/<phase>/commands.py`, `add_*` and `cmd_*`), the commands of no phase are in `knrecall/shared_commands.py`,
and their shared helpers in `knrecall/cliutil.py`. `SUBCOMMANDS` fixes the order `--help` lists them in.
"""

from __future__ import annotations

import argparse
import logging
import sys

from knrecall import __version__
from knrecall import shared_commands as shared
from knrecall.answer import commands as answer
from knrecall.attribution import commands as attribution
from knrecall.data import commands as data
from knrecall.errors import KnrecallError
from knrecall.interventions import commands as interventions
from knrecall.recall import commands as recall
from knrecall.report import commands as report
from knrecall.validation import commands as validation
from knrecall.world import commands as world

SUBCOMMANDS = (
    world.add_world, data.add_data, answer.add_answer,
    attribution.add_attribute, attribution.add_select_kns, shared.add_merge_metrics, attribution.add_attribute_prompt,
    recall.add_measure, recall.add_recall,
    interventions.add_causal, validation.add_subject_site, validation.add_scoreboard, interventions.add_intervene,
    interventions.add_intervention_summary, interventions.add_intervene_prompt,
    report.add_report, attribution.add_estimate, shared.add_tables, shared.add_timings,
    validation.add_validate_worlds, shared.add_schema, shared.add_check_params,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="knrecall", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"knrecall {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s knrecall %(levelname)s %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except KnrecallError as exc:
        print(f"knrecall: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("knrecall: interrupted", file=sys.stderr)
        return 130
    return 0
