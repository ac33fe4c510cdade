"""`safer-instruct construct ... dry_run=true`: the requests and cost of each selected stage, sending nothing.

Each stage's requests are built the way its step builds them, from its input as far as it is known:

* induce: exact (corpus texts x `samples_per_text`, less items already finished in a resumed out_dir);
* a later stage: from the previous stage's output where it exists in out_dir (a resumed run), from
  the previous stage's answers where the cache holds them, and otherwise assuming every item survives,
  with a stand-in of the answering role's `max_tokens` length in place of the answer (instruction,
  chosen response): such a row is marked "upper bound". Heuristics run on real rows only.

A stage finished earlier (kept by a real run) and an expert check that is off make no requests. Nothing
in out_dir is changed except `estimate.json` (and `config.dry_run.yaml`: the real run's `config.yaml` stays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from safer_instruct.construct.pipeline import ConstructRun
from safer_instruct.construct.steps import UPSTREAM
from safer_instruct.construct.store import FAILED, KEPT, StageStore
from safer_instruct.data.corpus import CorpusReader
from safer_instruct.llm import estimate

ROLES = {"induce": "inducer", "filter_instructions": "expert", "respond": "expert", "filter_responses": "expert"}

Projected = list[tuple[dict[str, Any], bool]]  # output rows; True: surely there, with real text


def finished_records(store: StageStore) -> dict[str, dict[str, Any]]:
    """Items with a final record in a stage's progress made under the current settings (read only)."""
    if store.stored_signature() != store.signature:
        return {}  # the real run discards them
    latest: dict[str, dict[str, Any]] = {}
    for record in store.iter_progress():
        latest[record["id"]] = record
    return {item: record for item, record in latest.items() if record["status"] != FAILED}


class ConstructEstimate:
    """Walks the selected stages in order, projecting each one's output for the next."""

    def __init__(self, run: ConstructRun, session: Any):
        self.run, self.session = run, session
        self.outputs: dict[str, Projected] = {}

    def max_tokens(self, role: str) -> int:
        return int(self.run.cfg[role].max_tokens)

    def output_of(self, stage: str) -> Projected:
        if stage not in self.outputs:  # not selected: its finished output (check_inputs made sure it exists)
            self.outputs[stage] = [(row, True) for row in self.run.stores[stage].iter_output()]
        return self.outputs[stage]

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.run.stages:
            if name not in ROLES:
                continue  # assemble asks no model
            store = self.run.stores[name]
            model = str(self.run.cfg[ROLES[name]].model)
            if store.is_done():
                rows.append(estimate.quiet_row(name, ROLES[name], model, "finished earlier: kept"))
                self.outputs[name] = [(row, True) for row in store.iter_output()]
                continue
            done = finished_records(store)
            kept = [(record["row"], True) for record in done.values() if record["status"] == KEPT]
            rows.append(self.induce(done, kept) if name == "induce" else self.expert(name, done, kept, model))
        return rows

    def induce(self, done: dict[str, dict[str, Any]], kept: Projected) -> dict[str, Any]:
        task = self.run._step("induce").task
        texts = [{"source_id": t.source_id, "text": t.text, "category": t.category}
                 for t in CorpusReader(self.run.corpus_spec)]  # fmt: skip
        requests = [request for row in texts for request in task.requests(row, skip=set(done))]
        note = f"{len(texts)} texts x {task.samples} samples" + (f", {len(done)} done earlier" if done else "")
        row = estimate.estimate_row(self.session, "inducer", "induce", requests, note=note)
        answers = estimate.cached_answers(self.session.role("inducer"), requests)
        stand_in = estimate.stand_in_text(self.max_tokens("inducer"))
        projected = list(kept)
        for request in requests:
            if request.id in answers:
                outcome = task.parse(answers[request.id])
                if outcome.status == KEPT:
                    projected.append((outcome.row, True))
                continue
            source = request.metadata["row"]
            projected.append(({"id": request.id, "source_id": source["source_id"], "sample_index": request.sample_index,
                               "category": source["category"], "text": source["text"], "instruction": stand_in}, False))  # fmt: skip
        self.outputs["induce"] = sorted(projected, key=lambda pair: pair[0]["id"])
        return row

    def expert(self, name: str, done: dict[str, dict[str, Any]], kept: Projected, model: str) -> dict[str, Any]:
        step = self.run._step(name)
        upstream = sorted(self.output_of(UPSTREAM[name]), key=lambda pair: pair[0]["id"])
        check = step.pre_check() if step.pre_check else None
        projected, asked, pre_dropped = list(kept), [], 0
        for row, certain in upstream:
            # As the step does: the (stateful) pre-check sees every row in id order, finished ones too.
            reason = check(row) if check and certain else None
            if row["id"] in done:
                continue
            if reason is not None:
                pre_dropped += 1
            elif not step.enabled:
                projected.append((row, certain))
            else:
                asked.append((row, certain))
        uncertain = any(not certain for _, certain in upstream)
        notes = [f"{len(done)} done earlier"] if done else []
        notes += [f"{pre_dropped} dropped by heuristics"] if pre_dropped else []
        if not step.enabled:
            self.outputs[name] = sorted(projected, key=lambda pair: pair[0]["id"])
            return estimate.quiet_row(name, "expert", model, "; ".join(["expert_check off: no requests", *notes]))
        requests = [request for row, _ in asked for request in step.task.requests(row)]
        notes += ["upper bound"] if uncertain else []
        result = estimate.estimate_row(self.session, "expert", name, requests, upper_bound=uncertain,
                                       note="; ".join(notes))  # fmt: skip
        answers = estimate.cached_answers(self.session.role("expert"), requests)
        for (row, certain), request in zip(asked, requests, strict=True):
            if request.id in answers:
                outcome = step.task.parse(answers[request.id])
                if outcome.status == KEPT:
                    projected.append((outcome.row, certain))
            elif name == "respond":
                projected.append(({**row, "chosen": estimate.stand_in_text(self.max_tokens("expert"))}, False))
            else:
                projected.append((row, False))  # a verdict not known yet: assume it passes
        self.outputs[name] = sorted(projected, key=lambda pair: pair[0]["id"])
        return result


def estimate_construct(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """The dry run of `safer-instruct construct`: print the table, write `estimate.json`, return it."""
    run = ConstructRun(cfg, out_dir)
    run.check_inputs()
    session = estimate.dry_run_session(run.roles_needed(run.pending()), cfg.cache.dir)
    try:
        rows = ConstructEstimate(run, session).rows()
        notes = estimate.missing_keys(session)
    finally:
        session.close()
    return estimate.report("construct", Path(out_dir), rows, budget_usd=(cfg.get("llm") or {}).get("budget_usd"),
                           extra={"stages": run.stages}, notes=notes)  # fmt: skip
