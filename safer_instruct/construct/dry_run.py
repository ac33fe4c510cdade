"""`safer-instruct construct ... dry_run=true`: the requests and cost of each selected phase, sending nothing.

The selected LLM phases run their own code (`InducePhase`, `ExpertPhase`) against a dry-run LLM
session, in a scratch copy of out_dir's phase stores (so a resumed run's finished items are skipped
as the real run skips them, and out_dir is left alone). Cached answers are used as they are; every
other request is counted and answered with a placeholder of the role's `max_tokens` length, which
the phase takes as follows (today's rule, kept):

* induce: exact (corpus texts x `samples_per_text`, less items already finished in a resumed out_dir);
* a later phase: from the previous phase's output where it exists in out_dir (a resumed run), from
  the previous phase's answers where the cache holds them, and otherwise assuming every item survives,
  with the placeholder in place of the answer (instruction, chosen response) and a placeholder verdict
  taken as a pass: such a row is marked "upper bound". Heuristics run on real rows only.

A phase finished earlier (kept by a real run) and an expert check that is off make no requests. Nothing
in out_dir is changed except `estimate.json` (and `config.dry_run.yaml`: the real run's `config.yaml` stays;
the stores of an out_dir written before construct's units were called phases move to their new names, as
in a real run: `store.adopt_legacy_stores`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from safer_instruct.construct.phases import UPSTREAM, ExpertPhase, PhaseContext, RoleRunner
from safer_instruct.construct.pipeline import ConstructRun
from safer_instruct.construct.store import KEPT, STORES_DIR
from safer_instruct.construct.tasks import Outcome, VerdictTask
from safer_instruct.llm import estimate
from safer_instruct.llm.types import Result

PLACEHOLDER = "dry_run_placeholder"  # a row field: the row holds (or passed on) a placeholder answer


class PlaceholderTask:
    """A phase's task in a dry run: real and cached answers are read as the task reads them; a
    placeholder is kept and its row marked, a placeholder verdict taken as a pass."""

    def __init__(self, task: Any):
        self.task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def parse(self, result: Result) -> Outcome:
        if not estimate.is_placeholder(result):
            return self.task.parse(result)
        row = result.metadata["row"] if isinstance(self.task, VerdictTask) else self.task.parse(result).row
        return Outcome(KEPT, None, {**row, PLACEHOLDER: True})


def real_rows_only(make_check: Callable[[], Callable], done: set[str], dropped: list[int]) -> Callable[[], Callable]:
    """The phase's pre-check (heuristics) on real rows only; counts the rows it drops that are not done."""

    def make() -> Callable[[Mapping[str, Any]], str | None]:
        check = make_check()

        def checked(row: Mapping[str, Any]) -> str | None:
            if row.get(PLACEHOLDER):
                return None
            reason = check(row)
            if reason is not None and row["id"] not in done:
                dropped[0] += 1
            return reason

        return checked

    return make


def phase_rows(run: ConstructRun, session: Any) -> list[dict[str, Any]]:
    """Run the selected LLM phases of `run` (in its scratch out_dir) through `session`; a row each."""
    ctx = PhaseContext(run.out_dir, RoleRunner(session.role), run.stores)
    rows = []
    for name in run.phases:
        if name == "assemble":
            continue  # asks no model
        phase, store = run.build_phase(name), run.stores[name]
        role = phase.task.role
        model = str(run.cfg[role].model)
        if store.is_done():
            rows.append(estimate.quiet_row(name, role, model, "finished earlier: kept"))
            continue
        # Read before the phase opens its store; records made under other settings the real run discards.
        done = store.final_ids() if store.stored_signature() == store.signature else set()
        notes = [f"{len(done)} done earlier"] if done else []
        phase.task = PlaceholderTask(phase.task)
        if name == "induce":
            info = phase.run(ctx)
            note = f"{info['texts']} texts x {phase.task.samples} samples" + (f", {notes[0]}" if done else "")
            rows.append(estimate.estimate_row(session, role, name, note=note))
            continue
        assert isinstance(phase, ExpertPhase)
        uncertain = any(row.get(PLACEHOLDER) for row in run.stores[UPSTREAM[name]].iter_output())
        dropped = [0]
        if phase.pre_check is not None:
            phase.pre_check = real_rows_only(phase.pre_check, done, dropped)
        phase.run(ctx)
        notes += [f"{dropped[0]} dropped by heuristics"] if dropped[0] else []
        if not phase.enabled:
            rows.append(estimate.quiet_row(name, role, model, "; ".join(["expert_check off: no requests", *notes])))
            continue
        notes += ["upper bound"] if uncertain else []
        rows.append(estimate.estimate_row(session, role, name, upper_bound=uncertain, note="; ".join(notes)))
    return rows


def estimate_construct(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """The dry run of `safer-instruct construct`: print the table, write `estimate.json`, return it."""
    out_dir = Path(out_dir)
    run = ConstructRun(cfg, out_dir)
    run.check_inputs()
    session = estimate.dry_run_session(run.roles_needed(run.pending()), cfg.cache.dir)
    try:
        with tempfile.TemporaryDirectory(prefix="dry-run-") as scratch:
            if (out_dir / STORES_DIR).is_dir():  # a resumed run's stores, copied: out_dir stays as it is
                shutil.copytree(out_dir / STORES_DIR, Path(scratch) / STORES_DIR)
            rows = phase_rows(ConstructRun(cfg, scratch), session)
        notes = estimate.missing_keys(session)
    finally:
        session.close()
    return estimate.report("construct", out_dir, rows, budget_usd=(cfg.get("llm") or {}).get("budget_usd"),
                           extra={"phases": run.phases}, notes=notes)  # fmt: skip
