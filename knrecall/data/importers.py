"""Dataset importers: TFRKN JSON, MQuAKE-style JSON and JSON Lines become `Item`s (DESIGN.md §3).

This module reads the file and dispatches each record to its format (`knrecall.data.tfrkn`, `knrecall.data.mquake`;
field checks in `knrecall.data.fields`).

Every input problem raises `KnrecallError` with one line naming the file, the record (`record N`, 0-based, in a
JSON list; `line N`, 1-based, in JSON Lines) and, when relevant, the field. The whole file is read and checked
before anything is written, so a bad input never leaves a partial `items.parquet`. Unknown fields are kept verbatim
in `Item.extra`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from knrecall.data.fields import Fields, kind
from knrecall.data.items import Item, write_items
from knrecall.data.mquake import mquake_item
from knrecall.data.tfrkn import tfrkn_item
from knrecall.errors import KnrecallError

log = logging.getLogger(__name__)

FORMATS = ("tfrkn", "mquake", "jsonl", "auto")

Parser = Callable[[Fields], "Item | str"]  # an Item, or the reason the record is skipped


@dataclass
class ImportResult:
    """What one import produced: the items, the resolved format and the records skipped (reason → count)."""

    items: list[Item]
    fmt: str
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


# --------------------------------------------------------------------------------------------- public functions


def import_dataset(path: Path, fmt: str = "auto") -> list[Item]:
    """Read a dataset file (`fmt`: tfrkn, mquake, jsonl or auto) into items; raise `KnrecallError` on bad input."""
    return read_dataset(path, fmt).items


def read_dataset(path: str | Path, fmt: str = "auto") -> ImportResult:
    """Like `import_dataset`, but also report the resolved format and the skipped records.

    `auto` picks jsonl for a `.jsonl` file, otherwise looks at the first record: `two_hop` means tfrkn,
    `single_hops` or `requested_rewrite` means mquake. Skipped records (MQuAKE items with other than two hops)
    are logged as one warning line.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise KnrecallError(f"{path}: unknown format {fmt!r} (expected one of: {', '.join(FORMATS)})")

    if fmt == "jsonl" or (fmt == "auto" and path.suffix.lower() == ".jsonl"):
        fmt, entries = "jsonl", _jsonl_entries(path)
    else:
        records = _json_list(path)
        if fmt == "auto":
            fmt = _guess_format(path, records)
        entries = [(f"record {i}", record) for i, record in enumerate(records)]

    parse = _PARSERS[fmt]
    items, skipped = _parse_entries(path, entries, parse)
    if skipped:
        log.warning("%s: skipped %d of %d records (%s)", path, sum(skipped.values()), len(entries),
                    _describe_skips(skipped))
    if not items:
        raise KnrecallError(f"{path}: no usable items ({_why_empty(len(entries), skipped)})")
    return ImportResult(items=items, fmt=fmt, skipped=dict(skipped))


def run_import(input_path: str | Path, fmt: str, out_path: str | Path, params: dict[str, Any] | None = None) -> int:
    """Import `input_path` and write the items table to `out_path` (atomically); return the item count.

    The input is fully checked first, so a bad input leaves no output file behind.
    """
    result = read_dataset(input_path, fmt)
    try:
        write_items(result.items, out_path, params, source_file=str(input_path), format=result.fmt,
                    skipped=result.n_skipped)
    except OSError as exc:
        raise KnrecallError(f"{out_path}: cannot write the items table ({exc.strerror or exc})") from None
    return len(result.items)


# --------------------------------------------------------------------------------------------- reading files


def _read_text(path: Path) -> str:
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    if path.is_dir():
        raise KnrecallError(f"{path}: is a directory, expected a dataset file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KnrecallError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise KnrecallError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _json_list(path: Path) -> list[Any]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnrecallError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise KnrecallError(f"{path}: not valid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise KnrecallError(f"{path}: expected a JSON list of records at the top level, got {kind(data)}")
    return data


def _jsonl_entries(path: Path) -> list[tuple[str, Any]]:
    """(`line N`, record) for every non-blank line. Split on \\n only: JSON strings may hold U+2028 and friends."""
    entries = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            entries.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise KnrecallError(f"{path}: line {number}: not valid JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise KnrecallError(f"{path}: line {number}: not valid JSON: nested too deeply") from None
    return entries


def _guess_format(path: Path, records: list[Any]) -> str:
    if not records:
        raise KnrecallError(f"{path}: no usable items (the file holds an empty list)")
    first = records[0]
    if not isinstance(first, dict):
        raise KnrecallError(f"{path}: record 0: expected a JSON object, got {kind(first)}")
    if "two_hop" in first:
        return "tfrkn"
    if "single_hops" in first or "requested_rewrite" in first:
        return "mquake"
    raise KnrecallError(
        f"{path}: record 0: cannot tell the format (no 'two_hop', 'single_hops' or 'requested_rewrite' field); "
        "name it explicitly: tfrkn, mquake or jsonl"
    )


def _parse_entries(path: Path, entries: list[tuple[str, Any]], parse: Parser) -> tuple[list[Item], Counter[str]]:
    """Parse every record; reject duplicate case_ids (naming both records); count skipped records by reason."""
    items: list[Item] = []
    skipped: Counter[str] = Counter()
    seen: dict[str, str] = {}
    for label, record in entries:
        fields = Fields.of(record, f"{path}: {label}")
        result = parse(fields)
        if isinstance(result, str):
            skipped[result] += 1
            continue
        if result.case_id in seen:
            raise fields.error("case_id", f"duplicate case_id {result.case_id!r} (also {seen[result.case_id]})")
        seen[result.case_id] = label
        items.append(result)
    return items, skipped


def _describe_skips(skipped: Counter[str]) -> str:
    return ", ".join(f"{count} with {reason}" for reason, count in sorted(skipped.items()))


def _why_empty(n_records: int, skipped: Counter[str]) -> str:
    if n_records == 0:
        return "the file holds no records"
    return f"all {n_records} records skipped: {_describe_skips(skipped)}"


_PARSERS: dict[str, Parser] = {
    "tfrkn": lambda f: tfrkn_item(f, default_source="tfrkn"),
    "jsonl": lambda f: tfrkn_item(f, default_source="jsonl"),
    "mquake": mquake_item,
}
