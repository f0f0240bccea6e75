"""Atomic, typed Parquet and JSON writes with provenance metadata (DESIGN.md §7)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from knrecall import __version__
from knrecall.errors import KnrecallError

SCHEMA_VERSION = 1
METADATA_KEY = b"knrecall"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "knrecall": __version__}
    for name in ("torch", "transformers", "tokenizers", "pyarrow", "polars"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def provenance(params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The metadata stored with every output: schema version, library versions, parameters."""
    return {
        "schema_version": SCHEMA_VERSION,
        "libraries": library_versions(),
        "params": params or {},
        **extra,
    }


def write_parquet(table: pa.Table, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write `table` (zstd) atomically with `metadata` as JSON under the `knrecall` key."""
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata({**existing, METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: str | os.PathLike) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise KnrecallError(f"{path}: not a readable Parquet file ({exc})") from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
