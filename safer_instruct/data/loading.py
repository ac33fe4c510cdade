"""What every data source shares: its settings base class, its load statistics, and row reading.

A source reads rows from a local file (JSONL, JSON, CSV, Parquet, `.jsonl.gz`), a folder of such
files, a `save_to_disk` folder, or a Hub dataset id (real runs), and turns each row into the project's
schema. A malformed row is either a `DataError` naming file, row and field (`on_error: raise`, the
default) or skipped and counted in `LoadStats` (`on_error: skip`); nothing is dropped uncounted.

A Hub dataset is read at `data.revision` (a commit hash, tag or branch; null: the current main), and
the commit actually read is recorded (`LoadStats.revision`, in data_stats.json and train_summary.json).
`data.sample_size` / `data.sample_seed` / `data.stratify_by` draw a fixed number of rows at random
(`safer_instruct.data.sources.sample_rows`), so that runs on sources of different sizes train on the
same number of rows.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from safer_instruct.errors import ConfigError, DataError
from safer_instruct.io import SUPPORTED_SUFFIXES, Row, file_type, iter_rows

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
DEDUPE = ("none", "exact", "prompt")
STRATIFY = ("category", "none")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_WHITESPACE = re.compile(r"\s+")
T = TypeVar("T")


def _help(default: Any, text: str, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class SampleSpec:
    """Drawing a fixed number of rows at random (`data.sample_size`, ...), for rows that compare fairly."""

    sample_size: int | None = _help(None, "Train on exactly this many rows, drawn at random after every filter (DPO: "
                                          "among the rows with a rejected response); null: all rows. More than the "
                                          "source has is an error.")
    sample_seed: int = _help(0, "Seed of that draw: the same seed draws the same rows (recorded in train_summary.json).")
    stratify_by: str = _help("category", "category: draw from each category in proportion to its rows (when the source "
                                         "has more than one); none: one draw over all rows.")

    def check_sample(self) -> None:
        if self.sample_size is not None and int(self.sample_size) < 1:
            raise ConfigError(f"data.sample_size must be >= 1 or null, got {self.sample_size}")
        if self.stratify_by not in STRATIFY:
            raise ConfigError(f"data.stratify_by must be one of {', '.join(STRATIFY)}, got '{self.stratify_by}'")


@dataclass
class SourceSpec(SampleSpec):
    """Settings every source has (`data.*`)."""

    source: str = _help("", "Which loader reads the data (constructed, safer_instruct_release, hh_rlhf, pku_saferlhf, "
                            "mixture, instructions).")
    path: str = _help("", "A local file or folder in the source's release format, or a Hub dataset id (real runs).")
    split: str = _help("train", "Split to read: for a folder, files whose name starts with it; for a Hub id, the split.")
    data_dir: str | None = _help(None, "Sub-folder of the dataset (e.g. harmless-base of HH-RLHF); Hub: data_dir. "
                                       "Ignored when `path` is a file.")
    revision: str | None = _help(None, "Hub datasets: the revision to read (a commit hash pins it; null: current main). "
                                       "The commit actually read is recorded with the run. Ignored for local paths.")
    on_error: str = _help("raise", "A malformed row: raise (error naming file, row and field) or skip (counted in data_stats.json).")
    dedupe: str = _help("exact", "Drop duplicates: none, exact (same prompt, chosen and rejected), prompt (first row per prompt).")
    max_rows: int | None = _help(None, "Keep at most this many rows (after de-duplication), for quick runs.")

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError(f"data.path is empty: point it at a local file/folder in the {self.source} release format "
                              "or a Hub dataset id")  # fmt: skip
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"data.on_error must be raise or skip, got '{self.on_error}'")
        if self.dedupe not in DEDUPE:
            raise ConfigError(f"data.dedupe must be one of {', '.join(DEDUPE)}, got '{self.dedupe}'")
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError(f"data.max_rows must be >= 1 or null, got {self.max_rows}")
        self.check_sample()


@dataclass
class LoadStats:
    """Counts of one load: rows read, kept, and dropped per reason (written to data_stats.json)."""

    source: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    parts: list[LoadStats] = field(default_factory=list)
    revision: dict[str, Any] = field(default_factory=dict)  # hub id -> {requested, resolved} commit
    categories: dict[str, dict[str, int]] = field(default_factory=dict)  # category -> loaded / pairs / used
    sample: dict[str, Any] = field(default_factory=dict)  # the draw of data.sample_size (sources.sample_rows)

    def skip(self, reason: str, error: DataError | None = None) -> None:
        self.dropped[reason] += 1
        if error is not None and len(self.errors) < 20:
            self.errors.append(str(error))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "source": self.source,
            "files": self.files,
            "rows_read": self.rows_read,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "notes": dict(self.notes),
            "errors": self.errors,
        }
        out.update({key: getattr(self, key) for key in ("revision", "categories", "sample") if getattr(self, key)})
        if self.parts:
            out["parts"] = [part.to_dict() for part in self.parts]
        return out

    def revisions(self) -> dict[str, Any]:
        """Hub inputs of this load and its parts: hub id -> {requested, resolved}."""
        found = dict(self.revision)
        for part in self.parts:
            found.update(part.revisions())
        return found

    def log_summary(self) -> None:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        log.info("data %s: %d rows read, %d kept, dropped: %s", self.source, self.rows_read, self.kept, dropped)
        if self.dropped.get("malformed"):
            log.warning("data %s: %d malformed row(s) skipped (on_error=skip); first: %s", self.source,
                        self.dropped["malformed"], self.errors[0] if self.errors else "?")  # fmt: skip


def normalize_text(text: str) -> str:
    """Whitespace-insensitive form of a text, for duplicate and held-out matching."""
    return _WHITESPACE.sub(" ", text).strip()


def is_hub_id(path: str) -> bool:
    """`owner/name` that is not an existing local path."""
    return not Path(path).expanduser().exists() and bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path))


def source_files(path: str, split: str, data_dir: str | None = None) -> list[Path]:
    """The local files a source reads: the file itself, or the split's files inside a folder (or its
    `data_dir` sub-folder: a file path is read as it is, whatever the preset's data_dir says)."""
    root = Path(path).expanduser()
    if data_dir and not root.is_file():
        root = root / data_dir
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError("no such file or folder", path=str(root))
    readable = [p for p in sorted(root.rglob("*")) if p.is_file() and file_type(p) in SUPPORTED_SUFFIXES]
    of_split = [p for p in readable if p.name.startswith(split)]
    files = of_split or readable
    if not files:
        raise DataError(f"no {', '.join(SUPPORTED_SUFFIXES)} files inside", path=str(root))
    return files


def iter_source_rows(spec: SourceSpec, stats: LoadStats) -> Iterator[tuple[str, Row]]:
    """(file label, row) for every row of a source: local files, a save_to_disk folder, or a Hub dataset."""
    local = Path(spec.path).expanduser()
    if is_hub_id(spec.path):
        yield from _hub_rows(spec, stats)
        return
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        yield from _disk_rows(local, spec, stats)
        return
    for path in source_files(spec.path, spec.split, spec.data_dir):
        stats.files.append(str(path))
        for row in iter_rows(path):
            yield str(path), row


def parsed_rows(
    spec: SourceSpec,
    stats: LoadStats,
    parse: Callable[..., T],
    rows: Iterable[tuple[str, Row]] | None = None,
) -> Iterator[tuple[str, Row, T]]:
    """(file label, row, `parse(row.data, path=label, row=row.number)`) for every good row of a source.

    Reads `rows` (default: `iter_source_rows(spec, stats)`) and counts each in `stats.rows_read`. A row
    that could not be read, or that `parse` refuses with a `DataError` (naming file, row and field),
    is raised or skipped and counted as `data.on_error` says.
    """
    for label, row in iter_source_rows(spec, stats) if rows is None else rows:
        stats.rows_read += 1
        try:
            if row.error:
                raise DataError(row.error, path=label, row=row.number)
            parsed = parse(row.data, path=label, row=row.number)
        except DataError as err:
            if spec.on_error == "raise":
                raise
            stats.skip("malformed", err)
            continue
        yield label, row, parsed


def _disk_rows(folder: Path, spec: SourceSpec, stats: LoadStats) -> Iterator[tuple[str, Row]]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(folder))
    if isinstance(dataset, DatasetDict):
        if spec.split not in dataset:
            raise DataError(f"no split '{spec.split}' (has {', '.join(dataset)})", path=str(folder))
        dataset = dataset[spec.split]
    stats.files.append(str(folder))
    for number, record in enumerate(dataset, start=1):
        yield str(folder), Row(number, dict(record))


def _hub_rows(spec: SourceSpec, stats: LoadStats) -> Iterator[tuple[str, Row]]:
    label = f"hub:{spec.path}" + (f"/{spec.data_dir}" if spec.data_dir else "") + f"[{spec.split}]"
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        log.info("offline: %s must already be in the datasets cache", label)
    try:
        from datasets import load_dataset_builder

        # load_dataset's own steps, keeping the builder: its hash is the Hub commit that was read
        builder = load_dataset_builder(spec.path, data_dir=spec.data_dir, revision=spec.revision)
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=spec.split)
    except Exception as err:  # datasets raises many types; the user needs one line
        raise DataError(
            f"no local file or folder of that name, and it could not be loaded as a Hub dataset ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); offline, set data.path to a local copy in the release format",
            path=label,
        ) from None
    stats.files.append(label)
    record_revision(stats, spec.path, spec.revision, getattr(builder, "hash", None))
    for number, record in enumerate(dataset, start=1):
        yield label, Row(number, dict(record))


def record_revision(stats: LoadStats, repo_id: str, requested: str | None, resolved: str | None) -> None:
    """Note which commit of a Hub repo a load read (None when the library did not say).

    `datasets` reports it as its builder's hash (online: the commit it resolved; offline: the commit
    of the cached copy it fell back to, which may not be the one asked for: warned here).
    """
    resolved = str(resolved) if resolved and _COMMIT.fullmatch(str(resolved)) else None
    if requested and resolved and _COMMIT.fullmatch(str(requested)) and resolved != requested:
        log.warning("data %s: revision %s was asked for but %s was read (offline, datasets reads the cached copy)",
                    repo_id, requested, resolved)  # fmt: skip
    stats.revision[repo_id] = {"requested": requested, "resolved": resolved}
    log.info("data %s: revision requested %s, read %s", repo_id, requested or "main", resolved or "unknown")


def hub_snapshot(repo_id: str, revision: str | None = None, stats: LoadStats | None = None) -> Path:
    """A local folder with the files of a Hub dataset repo (for releases that are plain files, not a dataset),
    at `revision`; the commit it holds (the snapshot folder's name) is recorded in `stats`."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision))
        if stats is not None:
            record_revision(stats, repo_id, revision, folder.name)
        return folder
    except Exception as err:
        raise DataError(
            f"could not fetch the dataset repo ({type(err).__name__}: {str(err).splitlines()[0][:200]}); offline, set "
            "data.path to a local folder with its files",
            path=f"hub:{repo_id}",
        ) from None


def text_field(data: dict[str, Any], name: str, *, path: str, row: int, allow_empty: bool = False) -> str:
    """A required text field of a row, or a DataError naming it."""
    value = data.get(name)
    if value is None:
        raise DataError("is missing", path=path, row=row, field=name)
    if not isinstance(value, str):
        raise DataError(f"must be text, got {type(value).__name__}", path=path, row=row, field=name)
    if not allow_empty and not value.strip():
        raise DataError("is empty", path=path, row=row, field=name)
    return value
