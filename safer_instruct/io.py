"""Reading tabular files row by row with row numbers, and writing files atomically.

`iter_rows` streams JSONL (plain or `.jsonl.gz`), JSON, CSV and Parquet files and never raises for a
bad row: it yields a `Row` whose `error` says what is wrong, so that each caller decides between a
clear `DataError` (naming file and row) and quarantining the row with a count. Rows are numbered from 1
in file order (for JSONL that is the line number).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safer_instruct.errors import DataError

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass(frozen=True)
class Row:
    """One record of an input file: its 1-based number, its fields, or why it could not be read."""

    number: int
    data: dict[str, Any] | None
    error: str | None = None


def file_type(path: str | Path) -> str:
    """The lower-case suffix that decides how `iter_rows` reads a file; `.jsonl.gz` counts as one suffix."""
    path = Path(path)
    return ".jsonl.gz" if path.name.lower().endswith(".jsonl.gz") else path.suffix.lower()


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Stream the rows of a JSONL/JSONL.GZ/JSON/CSV/Parquet file (memory does not grow with the file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    suffix = file_type(path)
    readers = {".jsonl": _jsonl_rows, ".jsonl.gz": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows,
               ".parquet": _parquet_rows}  # fmt: skip
    if suffix not in readers:
        raise DataError(f"unsupported file type '{suffix}' (use one of {', '.join(SUPPORTED_SUFFIXES)})", path=str(path))
    yield from readers[suffix](path)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    """JSONL rows, numbered by line; a `.jsonl.gz` file (the HH-RLHF release) is decompressed as it streams."""
    with gzip.open(path, "rb") if file_type(path) == ".jsonl.gz" else path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield Row(number, None, f"not valid UTF-8 (byte {err.start})")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                yield Row(number, None, f"not valid JSON ({err.msg})")
                continue
            if not isinstance(value, dict):
                yield Row(number, None, f"expected a JSON object, got {type(value).__name__}")
                continue
            yield Row(number, value)


def _json_rows(path: Path) -> Iterator[Row]:
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"not a valid UTF-8 JSON file ({err})", path=str(path)) from None
    if isinstance(value, dict):  # {"data": [...]} or {"train": [...]} wrappers
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else value
    if not isinstance(value, list):
        raise DataError("expected a JSON list of objects", path=str(path))
    for number, item in enumerate(value, start=1):
        yield Row(number, item) if isinstance(item, dict) else Row(number, None, "expected a JSON object")


def _csv_rows(path: Path) -> Iterator[Row]:
    csv.field_size_limit(2**31 - 1)
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        for number, record in enumerate(csv.DictReader(_skip_leading_comments(handle)), start=1):
            if None in record:
                yield Row(number, None, "more fields than the header has")
                continue
            bad = [key for key, value in record.items() if isinstance(value, str) and has_lone_surrogates(value)]
            if bad:
                yield Row(number, None, f"field '{bad[0]}' is not valid UTF-8")
                continue
            yield Row(number, dict(record))


def _skip_leading_comments(lines: Iterable[str]) -> Iterator[str]:
    """Drop `# ...` lines before the header (some shipped CSVs start with a version comment)."""
    in_header = True
    for line in lines:
        if in_header and line.startswith("#"):
            continue
        in_header = False
        yield line


def has_lone_surrogates(text: str) -> bool:
    """Whether a text holds lone surrogates (undecodable bytes kept by `surrogateescape`, or escaped
    in JSON), which cannot be written as UTF-8 or sent to a model."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield Row(number, record)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL atomically; returns how many were written."""
    lines = [json.dumps(row, ensure_ascii=False, default=str) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSONL file we wrote ourselves; a malformed row is a DataError."""
    rows = []
    for row in iter_rows(path):
        if row.error:
            raise DataError(row.error, path=str(path), row=row.number)
        rows.append(row.data)
    return rows
