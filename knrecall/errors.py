"""The one exception type that reaches the user as a single clear line (no traceback)."""


class KnrecallError(Exception):
    """A problem with the user's input or setup: the message names the file, record and field."""


def where(path, record=None, field=None) -> str:
    """Format the location part of an input error: `file.json: record 3: field 'fact1_ans'`."""
    parts = [str(path)]
    if record is not None:
        parts.append(f"record {record}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ": ".join(parts)
