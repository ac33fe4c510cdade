"""The construction phases: rows in (the previous phase's output), rows out (this phase's).

Each phase writes every item's fate into its `PhaseStore` as soon as it is known, and asks its LLM role
only for the items that have no final record yet, so a rerun after a kill continues where it stopped
and never repeats an answered request. Items flow in id order and every output is sorted by id, so
the result does not depend on the order in which answers arrived.

    induce              corpus text -> k (instruction, text) candidates       role: inducer
    filter_instructions heuristics, then the expert's pass/fail verdict       role: expert
    respond             the expert writes the preferred response (chosen)     role: expert
    filter_responses    the expert checks chosen vs rejected                  role: expert
    assemble            dedup, leakage guard, held-out split, preference rows (no LLM)
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safer_instruct.construct.dedup import NearDuplicateIndex
from safer_instruct.construct.store import DROPPED, KEPT, PhaseStore
from safer_instruct.construct.tasks import InduceTask, Outcome, RespondTask, VerdictTask
from safer_instruct.data.corpus import CorpusReader
from safer_instruct.data.leakage import LeakageGuard
from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.io import atomic_write_json
from safer_instruct.llm.types import ChatRequest

PHASE_ORDER = ("induce", "filter_instructions", "respond", "filter_responses", "assemble")
UPSTREAM = dict(zip(PHASE_ORDER[1:], PHASE_ORDER[:-1], strict=True))


class RoleRunner:
    """Sends requests to a role of the LLM session, opening the session only when there is work.

    `generate(role, requests, phase)` yields one result per request; with no requests at all the
    session (and any managed server behind it) is never started.
    """

    def __init__(self, open_role: Callable[[str], Any]):
        self._open_role = open_role
        self.stats: dict[str, dict[str, Any]] = {}

    def generate(self, role_name: str, requests: Iterable[ChatRequest], phase: str) -> Iterator[Any]:
        requests = iter(requests)
        first = next(requests, None)
        if first is None:
            return
        role = self._open_role(role_name)
        yield from role.generate(itertools.chain([first], requests), phase=phase)
        self.stats[phase] = dict(role.stats(phase))


@dataclass
class PhaseContext:
    out_dir: Path
    runner: RoleRunner
    stores: dict[str, PhaseStore]


def _record(store: PhaseStore, outcome: Outcome) -> None:
    store.append(outcome.row["id"], outcome.status, outcome.row, reason=outcome.reason,
                 category=outcome.row.get("category", ""))  # fmt: skip


@dataclass
class InducePhase:
    """Sample k instructions per corpus text with the reversed model."""

    task: InduceTask
    corpus: CorpusReader
    name: str = "induce"

    def run(self, ctx: PhaseContext) -> dict[str, Any]:
        store = ctx.stores[self.name]
        store.open()
        done = store.final_ids()
        spec = self.corpus.spec
        if spec.on_bad_row == "error" and not spec.path.startswith("hub:"):
            # Read the whole corpus once before sending anything: a bad row at the end must not
            # stop the run after every text before it has been paid for.
            for _ in CorpusReader(spec):
                pass

        def requests() -> Iterator[ChatRequest]:
            for text in self.corpus:
                row = {"source_id": text.source_id, "text": text.text, "category": text.category}
                yield from self.task.requests(row, skip=done)

        for result in ctx.runner.generate(self.task.role, requests(), self.name):
            _record(store, self.task.parse(result))
        counts = self.corpus.counts.to_dict()
        info = store.finish({"corpus": counts, "texts": counts["kept"], "samples_per_text": self.task.samples,
                             "inputs_cut": self.task.inputs_cut, "llm": ctx.runner.stats.get(self.name, {})})  # fmt: skip
        return _count_flagged(store, info, self.task.on_truncated)


@dataclass
class ExpertPhase:
    """Ask the expert about each upstream row; an optional pre-check drops rows first (no request)."""

    name: str
    task: VerdictTask | RespondTask
    enabled: bool = True
    pre_check: Callable[[], Callable[[Mapping[str, Any]], str | None]] | None = None

    def run(self, ctx: PhaseContext) -> dict[str, Any]:
        store = ctx.stores[self.name]
        store.open()
        done = store.final_ids()
        check = self.pre_check() if self.pre_check else None

        def requests() -> Iterator[ChatRequest]:
            for row in ctx.stores[UPSTREAM[self.name]].iter_output():
                # The pre-check runs over every row in id order on every run (it is deterministic and
                # stateful: dedup), but only rows without a record get one.
                reason = check(row) if check else None
                if row["id"] in done:
                    continue
                if reason is not None:
                    store.append(row["id"], DROPPED, row, reason=reason, category=row.get("category", ""))
                elif not self.enabled:
                    store.append(row["id"], KEPT, row, category=row.get("category", ""))
                else:
                    yield from self.task.requests(row)

        for result in ctx.runner.generate(self.task.role, requests(), self.name):
            _record(store, self.task.parse(result))
        info = store.finish({"expert_check": self.enabled, "llm": ctx.runner.stats.get(self.name, {})})
        return _count_flagged(store, info, self.task.on_truncated)


def _count_flagged(store: PhaseStore, info: dict[str, Any], on_truncated: str) -> dict[str, Any]:
    """Record the phase's truncation policy and, when cut-off answers are kept, how many were."""
    info["on_truncated"] = on_truncated
    if on_truncated == "flag":
        info["truncated_kept"] = sum(store.phase in (row.get("truncated") or ()) for row in store.iter_output())
    atomic_write_json(store.done_path, info)
    return info


# ---------------------------------------------------------------- assemble


@dataclass
class AssemblePhase:
    """Dedup prompts, drop evaluation-set leaks, hold out a test split, write the preference rows (`assemble.*`)."""

    guard: LeakageGuard
    provenance: Callable[[Mapping[str, Any]], dict[str, Any]]
    source: str
    test_size: float
    seed: int
    dedup: bool
    near_duplicate_threshold: float
    name: str = "assemble"

    def run(self, ctx: PhaseContext) -> dict[str, Any]:
        store = ctx.stores[self.name]
        store.reset()  # cheap and deterministic: always rebuilt from the upstream output
        store.open()
        dedup = NearDuplicateIndex(threshold=self.near_duplicate_threshold) if self.dedup else None
        for row in ctx.stores[UPSTREAM[self.name]].iter_output():
            category = row.get("category", "")
            reason = self.guard.check(row["instruction"])
            if reason is None and dedup is not None:
                verdict, _ = dedup.check_and_add(row["id"], row["instruction"])
                reason = {"duplicate": "duplicate_prompt", "near_duplicate": "near_duplicate_prompt"}.get(verdict)
            store.append(row["id"], DROPPED if reason else KEPT, row, reason=reason, category=category)
        info = store.finish({"leakage": {"sets": self.guard.sets, "skipped": self.guard.skipped}})
        info["splits"] = self._write_splits(ctx.out_dir, store)
        atomic_write_json(store.done_path, info)
        return info

    def test_sources(self, store: PhaseStore) -> set[str]:
        """Held-out source texts: all samples of one text land in the same split (no near-twins across)."""
        sources = sorted({row["source_id"] for row in store.iter_output()})
        random.Random(self.seed).shuffle(sources)
        n_test = round(self.test_size * len(sources))
        if self.test_size > 0 and n_test == 0 and len(sources) > 1:
            n_test = 1
        return set(sources[:n_test])

    def _write_splits(self, out_dir: Path, store: PhaseStore) -> dict[str, int]:
        test_sources = self.test_sources(store)
        counts = {"train": 0, "test": 0}
        paths = {"train": out_dir / "preference.jsonl", "test": out_dir / "preference_test.jsonl"}
        handles = {split: path.with_name(f".{path.name}.tmp").open("w", encoding="utf-8") for split, path in paths.items()}
        try:
            for row in store.iter_output():
                split = "test" if row["source_id"] in test_sources else "train"
                record = PreferenceRecord(prompt=row["instruction"], chosen=row["chosen"], rejected=row["text"],
                                          category=row.get("category", ""), source=self.source,
                                          source_id=row["source_id"], provenance=self.provenance(row))  # fmt: skip
                line = json.dumps(record.to_dict(), ensure_ascii=False, default=str)
                handles[split].write(line + "\n")
                counts[split] += 1
        finally:
            for handle in handles.values():
                handle.close()
        for path in paths.values():
            path.with_name(f".{path.name}.tmp").replace(path)
        return counts

