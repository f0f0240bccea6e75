"""Dataset importers: TFRKN JSON, MQuAKE-style JSON and JSON Lines become `Item`s (DESIGN.md §3).

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

from knrecall.data.items import SOURCES, SPLITS, Item, write_items
from knrecall.errors import KnrecallError

log = logging.getLogger(__name__)

FORMATS = ("tfrkn", "mquake", "jsonl", "auto")
# MQuAKE fields that describe the counterfactual edit; kept together as extra["counterfactual"].
COUNTERFACTUAL_KEYS = ("requested_rewrite", "new_answer", "new_answer_alias", "new_single_hops")

Parser = Callable[["_Fields"], "Item | str"]  # an Item, or the reason the record is skipped


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
        raise KnrecallError(f"{path}: expected a JSON list of records at the top level, got {_kind(data)}")
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
        raise KnrecallError(f"{path}: record 0: expected a JSON object, got {_kind(first)}")
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
        fields = _Fields.of(record, f"{path}: {label}")
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


# --------------------------------------------------------------------------------------------- field checks


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


class _Fields:
    """One input object with typed getters.

    Each getter names the file, record and field when the value is bad, and remembers the key, so that
    `rest()` gives back exactly the fields nobody read (they go verbatim into `Item.extra`). Absent and null
    optional fields read as None.
    """

    def __init__(self, record: dict[str, Any], at: str, prefix: str = "") -> None:
        self._record = record
        self.at = at  # "data.json: record 3"
        self._prefix = prefix  # "single_hops[0]." for nested objects
        self._used: set[str] = set()

    @classmethod
    def of(cls, value: Any, at: str, name: str | None = None) -> _Fields:
        """Wrap `value` (which must be an object); `name` is its field name when nested, e.g. `single_hops[0]`."""
        if not isinstance(value, dict):
            where = f"{at}: field '{name}'" if name else at
            raise KnrecallError(f"{where}: expected a JSON object, got {_kind(value)}")
        return cls(value, at, prefix=f"{name}." if name else "")

    def error(self, key: str, message: str) -> KnrecallError:
        return KnrecallError(f"{self.at}: field '{self._prefix}{key}': {message}")

    def has(self, key: str) -> bool:
        return self._record.get(key) is not None

    def raw(self, key: str, required: bool = False) -> Any:
        self._used.add(key)
        if required and key not in self._record:
            raise self.error(key, "missing required field")
        return self._record.get(key)

    def rest(self) -> dict[str, Any]:
        return {key: value for key, value in self._record.items() if key not in self._used}

    def text(self, key: str, required: bool = True) -> str | None:
        value = self.raw(key, required)
        if value is None and not required:
            return None
        self._check_text(key, value, "expected a non-empty string")
        return value

    def texts(self, key: str, required: bool = True, allow_empty: bool = False) -> list[str] | None:
        value = self.raw(key, required)
        if value is None and not required:
            return None
        what = "a list of strings" if allow_empty else "a non-empty list of strings"
        if not isinstance(value, list) or (not value and not allow_empty):
            raise self.error(key, f"expected {what}, got {_short(value)}")
        for i, element in enumerate(value):
            self._check_text(key, element, f"element {i}: expected a non-empty string")
        return value

    def case_id(self) -> str:
        value = self.raw("case_id", required=True)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        self._check_text("case_id", value, "expected an integer or a non-empty string")
        return value

    def flag(self, key: str) -> bool | None:
        value = self.raw(key)
        if value is not None and not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_short(value)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.raw(key)
        if value is not None and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {_short(value)}")
        return value

    def triplets(self, key: str, ids: bool = False, required: bool = False) -> list[list[str]] | None:
        """Two chained triplets `[[s, r1, o1], [o1, r2, o2]]`; ids may be integers (kept as strings)."""
        value = self.raw(key, required)
        if value is None and not required:
            return None
        shape_ok = isinstance(value, list) and len(value) == 2
        if not shape_ok or not all(isinstance(t, list) and len(t) == 3 for t in value):
            raise self.error(key, f"expected two [subject, relation, object] triplets, got {_short(value)}")
        chain = [[self._triplet_part(key, part, ids) for part in triplet] for triplet in value]
        if chain[0][2] != chain[1][0]:
            raise self.error(key, f"triplet chain broken: the first triplet's object {chain[0][2]!r} "
                                  f"differs from the second triplet's subject {chain[1][0]!r}")
        return chain

    def objects(self, key: str) -> list[_Fields]:
        """A required non-empty list of objects, each wrapped so its errors read `field 'key[i].name'`."""
        value = self.raw(key, required=True)
        if not isinstance(value, list) or not value:
            raise self.error(key, f"expected a non-empty list of objects, got {_short(value)}")
        return [_Fields.of(v, self.at, f"{self._prefix}{key}[{i}]") for i, v in enumerate(value)]

    def object(self, key: str) -> _Fields:
        """A required nested object, wrapped so its errors read `field 'key.name'`."""
        return _Fields.of(self.raw(key, required=True), self.at, f"{self._prefix}{key}")

    def _triplet_part(self, key: str, part: Any, ids: bool) -> str:
        if ids and isinstance(part, int) and not isinstance(part, bool):
            return str(part)
        expected = "expected a non-empty string or an integer" if ids else "expected a non-empty string"
        self._check_text(key, part, f"triplet element: {expected}")
        return part

    def _check_text(self, key: str, value: Any, expected: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"{expected}, got {_short(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.error(key, f"{expected}, got text with an unpaired surrogate: {_short(value)}") from None


# --------------------------------------------------------------------------------------------- record formats


def _tfrkn_item(f: _Fields, default_source: str) -> Item:
    """A TFRKN-shaped record (also the JSONL line format and what the synthetic world writes)."""
    item = Item(
        case_id=f.case_id(),
        source=f.choice("source", SOURCES) or default_source,
        two_hop=f.text("two_hop"),
        fact1_query=f.texts("fact1_query"),
        fact1_ans=f.text("fact1_ans"),
        fact2_query=f.texts("fact2_query"),
        fact2_ans=f.text("fact2_ans"),
        fact1_aliases=f.texts("fact1_aliases", required=False, allow_empty=True) or [],
        answer_aliases=_answer_aliases(f),
        split=f.choice("split", SPLITS),
        shortcut_planted=f.flag("shortcut_planted"),
        composable=f.flag("composable"),
        shortcut_conflicting=f.flag("shortcut_conflicting"),
        shortcut_answer=f.text("shortcut_answer", required=False),
    )
    _fill_chain(item, ids=f.triplets("two_hop_id", ids=True), labels=f.triplets("two_hop_label"))
    item.extra = f.rest()
    return item


def _answer_aliases(f: _Fields) -> list[str]:
    """`answer_aliases`, or its synonym `fact2_aliases`; both may be given only if they agree."""
    aliases = f.texts("answer_aliases", required=False, allow_empty=True)
    synonym = f.texts("fact2_aliases", required=False, allow_empty=True)
    if aliases is not None and synonym is not None and aliases != synonym:
        raise f.error("fact2_aliases", "is a synonym of 'answer_aliases' but differs from it; give only one")
    return aliases if aliases is not None else synonym or []


def _fill_chain(item: Item, ids: list[list[str]] | None, labels: list[list[str]] | None) -> None:
    if labels is not None:
        (item.subject, item.relation1, _), (_, item.relation2, _) = labels
    if ids is not None:
        (item.subject_id, item.relation1_id, item.bridge_id), (_, item.relation2_id, item.answer_id) = ids


def _mquake_item(f: _Fields) -> Item | str:
    """An MQuAKE-style record; only two-hop records become items (others return the skip reason)."""
    case_id = f.case_id()
    hops = f.objects("single_hops")
    if len(hops) != 2:
        return f"{len(hops)} hop{'s' if len(hops) != 1 else ''}"

    questions = f.texts("questions")
    answer = f.text("answer")
    answer_aliases = f.texts("answer_alias", allow_empty=True)
    hop1, hop2 = (_single_hop(hop) for hop in hops)
    if hop2["answer"] != answer:
        raise f.error("answer", f"{answer!r} differs from single_hops[1].answer {hop2['answer']!r}")
    orig = f.object("orig")
    item = Item(
        case_id=case_id,
        source="mquake",
        two_hop=questions[0],
        fact1_query=[hop1["question"]],
        fact1_ans=hop1["answer"],
        fact2_query=[hop2["question"]],
        fact2_ans=hop2["answer"],
        fact1_aliases=hop1["aliases"],
        answer_aliases=_union(answer_aliases, hop2["aliases"]),
    )
    _fill_chain(item, ids=orig.triplets("triples", ids=True, required=True),
                labels=orig.triplets("triples_labeled", required=True))
    item.extra = _mquake_extra(f, orig, questions, hop1, hop2)
    return item


def _single_hop(hop: _Fields) -> dict[str, Any]:
    return {
        "question": hop.text("question"),
        "cloze": hop.text("cloze", required=False),
        "answer": hop.text("answer"),
        "aliases": hop.texts("answer_alias", required=False, allow_empty=True) or [],
        "rest": hop.rest(),
    }


def _mquake_extra(f: _Fields, orig: _Fields, questions: list[str], hop1: dict[str, Any],
                  hop2: dict[str, Any]) -> dict[str, Any]:
    """Unknown fields, the question paraphrases, the cloze prompts and the counterfactual rewrite."""
    counterfactual = {key: f.raw(key) for key in COUNTERFACTUAL_KEYS if f.has(key)}
    extra = f.rest()
    extra["question_paraphrases"] = questions[1:]
    for n, hop in ((1, hop1), (2, hop2)):
        if hop["cloze"] is not None:
            extra[f"fact{n}_cloze"] = hop["cloze"]
        if hop["rest"]:
            extra[f"fact{n}_hop"] = hop["rest"]
    if orig.rest():
        extra["orig"] = orig.rest()
    if counterfactual:
        extra["counterfactual"] = counterfactual
    return extra


def _union(first: list[str], second: list[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))


_PARSERS: dict[str, Parser] = {
    "tfrkn": lambda f: _tfrkn_item(f, default_source="tfrkn"),
    "jsonl": lambda f: _tfrkn_item(f, default_source="jsonl"),
    "mquake": _mquake_item,
}
