"""The resumable store of one construction phase: append-only progress, atomic output.

Layout under `out_dir/phases/<phase>/`:

* `meta.json` - the phase's signature (a hash of everything that decides its results: templates,
  model names, sampling settings, the upstream phase's signature). Stored results made under another
  signature are discarded when the phase starts (the LLM cache still answers unchanged requests).
* `progress.jsonl` - one JSON line per finished item (`id`, `status` kept/dropped/failed, `reason`,
  `category`, `row`), appended and flushed as each answer arrives. A process killed at any moment
  (SIGKILL included) leaves at most one half-written last line, which is cut off on reopening; every
  complete line is a finished item that is never asked for again. `failed` items (no answer after the
  LLM layer's retries) are asked again on the next run.
* `output.jsonl` + `done.json` - written atomically when every item has a final record: the kept rows
  sorted by id (so the result does not depend on the order answers arrived in) and the phase's funnel.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from safer_instruct.errors import DataError
from safer_instruct.identity import digest
from safer_instruct.io import atomic_write_json

log = logging.getLogger(__name__)

KEPT, DROPPED, FAILED = "kept", "dropped", "failed"
FAILURE_REASON = "llm_failure"
STORES_DIR = "phases"  # out_dir/phases/<phase>/
LEGACY_STORES_DIR = "stages"  # before construct's units were called phases


def signature_of(value: Any) -> str:
    """A short stable hash of a JSON-able value (what a phase's finished items were made with)."""
    return digest(value, 16)


def adopt_legacy_stores(out_dir: str | Path) -> None:
    """Compatibility: an out_dir written before construct's units were called phases keeps its stores in
    `stages/<phase>/`, with a "stage" key in meta.json and done.json. Rename the keys, then move the
    folder to `phases/`, so that a resumed run keeps its finished work. The folder moves last, in one
    rename: a run killed midway finds `stages/` again and redoes what is left."""
    legacy, current = Path(out_dir) / LEGACY_STORES_DIR, Path(out_dir) / STORES_DIR
    if not legacy.is_dir() or current.exists():
        return
    for path in sorted(legacy.glob("*/*.json")):  # meta.json, done.json
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # unreadable: the store takes it as no record, as it would under the new name
        if "stage" in record:
            atomic_write_json(path, {"phase": record.pop("stage"), **record})
    try:
        legacy.rename(current)
    except OSError:
        if not current.is_dir():  # else another process moved it first
            raise
    log.info("%s: the phase stores of an earlier version moved from %s/ to %s/", out_dir, LEGACY_STORES_DIR, STORES_DIR)


class Funnel:
    """Counts in and out of one phase, overall and per category, with the reasons for drops.

    Invariant (checked by tests and by `outputs.funnel_problems`): in == out + sum(dropped), overall and per
    category; it holds by construction, as every item is counted once, as kept (None) or by its drop reason.
    """

    def __init__(self) -> None:
        self.outcomes: dict[str, Counter] = {}  # category -> {None (kept) or drop reason: count}

    def add(self, category: str, status: str, reason: str | None = None) -> None:
        if status == KEPT:
            reason = None
        elif status == FAILED:
            reason = FAILURE_REASON
        else:
            reason = reason or "unspecified"
        self.outcomes.setdefault(category or "uncategorized", Counter())[reason] += 1

    def to_dict(self) -> dict[str, Any]:
        def block(outcomes: Counter) -> dict[str, Any]:
            dropped = sorted((reason, n) for reason, n in outcomes.items() if reason is not None)
            return {"in": sum(outcomes.values()), "out": outcomes[None], "dropped": dict(dropped)}

        result = block(sum(self.outcomes.values(), Counter()))
        result["by_category"] = {cat: block(self.outcomes[cat]) for cat in sorted(self.outcomes)}
        return result


class PhaseStore:
    """Progress and output of one phase in one run directory."""

    def __init__(self, out_dir: str | Path, phase: str, signature: str):
        self.phase, self.signature = phase, signature
        self.dir = Path(out_dir) / STORES_DIR / phase
        self.progress_path = self.dir / "progress.jsonl"
        self.output_path = self.dir / "output.jsonl"
        self.done_path = self.dir / "done.json"
        self._handle = None

    # -- state

    def stored_signature(self) -> str | None:
        try:
            return json.loads((self.dir / "meta.json").read_text(encoding="utf-8")).get("signature")
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self) -> bool:
        return self.done_path.is_file() and self.output_path.is_file() and self.stored_signature() == self.signature

    def done_info(self) -> dict[str, Any]:
        return json.loads(self.done_path.read_text(encoding="utf-8"))

    def reset(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def open(self) -> None:
        """Start or continue the phase: discard results made under another signature, repair the tail."""
        stored = self.stored_signature()
        if stored is not None and stored != self.signature:
            log.warning("phase %s: settings changed since its stored results were made; starting it again", self.phase)
            self.reset()
        self.dir.mkdir(parents=True, exist_ok=True)
        if stored != self.signature:
            atomic_write_json(self.dir / "meta.json", {"phase": self.phase, "signature": self.signature})
        self._repair_tail()
        self.done_path.unlink(missing_ok=True)

    def _repair_tail(self) -> None:
        """Cut a half-written last line left by a killed process."""
        if not self.progress_path.is_file() or self.progress_path.stat().st_size == 0:
            return
        with self.progress_path.open("rb+") as handle:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                end = view.rfind(b"\n") + 1  # just after the last complete line (0: none is complete)
            handle.truncate(end)

    # -- progress

    def iter_progress(self) -> Iterator[dict[str, Any]]:
        if not self.progress_path.is_file():
            return
        with self.progress_path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    break  # a half-written tail (only while another process is writing)
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"corrupt progress record ({err.msg})", path=str(self.progress_path), row=number) from None

    def final_ids(self) -> set[str]:
        """Ids with a final record (kept or dropped); failed ones are asked again."""
        latest: dict[str, str] = {}
        for record in self.iter_progress():
            latest[record["id"]] = record["status"]
        return {item for item, status in latest.items() if status != FAILED}

    def append(self, record_id: str, status: str, row: Mapping[str, Any], reason: str | None = None,
               category: str = "") -> None:  # fmt: skip
        if self._handle is None:
            self._handle = self.progress_path.open("a", encoding="utf-8")
        record = {"id": record_id, "status": status, "reason": reason, "category": category, "row": dict(row)}
        # One write call per line, flushed at once: a kill can only lose or truncate the last line.
        self._handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    # -- completion

    def finish(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the sorted output and the funnel; returns the funnel."""
        self.close()
        offsets: dict[str, int] = {}
        funnel_records: dict[str, tuple[str, str | None, str]] = {}
        with self.progress_path.open("rb") if self.progress_path.is_file() else nullcontext(()) as handle:
            offset = 0
            for line in handle:
                record = json.loads(line)
                offsets[record["id"]] = offset
                funnel_records[record["id"]] = (record["status"], record.get("reason"), record.get("category", ""))
                offset += len(line)
        funnel = Funnel()
        for status, reason, category in funnel_records.values():
            funnel.add(category, status, reason)
        kept = sorted(i for i, (status, _, _) in funnel_records.items() if status == KEPT)
        tmp = self.output_path.with_name(f".{self.output_path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as out, (self.progress_path.open("rb") if kept else nullcontext()) as src:
            for record_id in kept:
                src.seek(offsets[record_id])
                row = json.loads(src.readline())["row"]
                out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.output_path)
        info = {"phase": self.phase, "signature": self.signature, "funnel": funnel.to_dict(), **dict(extra or {})}
        atomic_write_json(self.done_path, info)
        return info

    def iter_output(self) -> Iterator[dict[str, Any]]:
        with self.output_path.open("rb") as handle:
            for line in handle:
                yield json.loads(line)

