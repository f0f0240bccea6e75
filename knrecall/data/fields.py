"""Typed field access for one input record of a dataset file: every bad value is one line naming the file, the
record and the field (`knrecall.data.importers`)."""

from __future__ import annotations

from typing import Any

from knrecall.errors import KnrecallError


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


class Fields:
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
    def of(cls, value: Any, at: str, name: str | None = None) -> Fields:
        """Wrap `value` (which must be an object); `name` is its field name when nested, e.g. `single_hops[0]`."""
        if not isinstance(value, dict):
            where = f"{at}: field '{name}'" if name else at
            raise KnrecallError(f"{where}: expected a JSON object, got {kind(value)}")
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
            raise self.error(key, f"expected {what}, got {short(value)}")
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
            raise self.error(key, f"expected true or false, got {short(value)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.raw(key)
        if value is not None and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {short(value)}")
        return value

    def triplets(self, key: str, ids: bool = False, required: bool = False) -> list[list[str]] | None:
        """Two chained triplets `[[s, r1, o1], [o1, r2, o2]]`; ids may be integers (kept as strings)."""
        value = self.raw(key, required)
        if value is None and not required:
            return None
        shape_ok = isinstance(value, list) and len(value) == 2
        if not shape_ok or not all(isinstance(t, list) and len(t) == 3 for t in value):
            raise self.error(key, f"expected two [subject, relation, object] triplets, got {short(value)}")
        chain = [[self._triplet_part(key, part, ids) for part in triplet] for triplet in value]
        if chain[0][2] != chain[1][0]:
            raise self.error(key, f"triplet chain broken: the first triplet's object {chain[0][2]!r} "
                                  f"differs from the second triplet's subject {chain[1][0]!r}")
        return chain

    def objects(self, key: str) -> list[Fields]:
        """A required non-empty list of objects, each wrapped so its errors read `field 'key[i].name'`."""
        value = self.raw(key, required=True)
        if not isinstance(value, list) or not value:
            raise self.error(key, f"expected a non-empty list of objects, got {short(value)}")
        return [Fields.of(v, self.at, f"{self._prefix}{key}[{i}]") for i, v in enumerate(value)]

    def object(self, key: str) -> Fields:
        """A required nested object, wrapped so its errors read `field 'key.name'`."""
        return Fields.of(self.raw(key, required=True), self.at, f"{self._prefix}{key}")

    def _triplet_part(self, key: str, part: Any, ids: bool) -> str:
        if ids and isinstance(part, int) and not isinstance(part, bool):
            return str(part)
        expected = "expected a non-empty string or an integer" if ids else "expected a non-empty string"
        self._check_text(key, part, f"triplet element: {expected}")
        return part

    def _check_text(self, key: str, value: Any, expected: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"{expected}, got {short(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.error(key, f"{expected}, got text with an unpaired surrogate: {short(value)}") from None
