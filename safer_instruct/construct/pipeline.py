"""The construction pipeline: build the phases from config, run the selected ones, write the outputs.

`run_construct(cfg, out_dir)` is everything `safer-instruct construct` does. Phases run in the fixed
order of `PHASE_ORDER`; `phases=[...]` selects a subset, and a selected phase reads the finished
output of the one before it from `out_dir` (a ConfigError says which to run first if it is missing).
A phase already finished under the same settings is not run again; one stopped midway continues.
The LLM session (and any managed server behind a role) is opened only when a phase has requests
to send.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safer_instruct.construct import outputs
from safer_instruct.construct.heuristics import InstructionHeuristics
from safer_instruct.construct.phases import (
    PHASE_ORDER,
    UPSTREAM,
    AssemblePhase,
    ExpertPhase,
    InducePhase,
    PhaseContext,
    RoleRunner,
)
from safer_instruct.construct.store import PhaseStore, adopt_legacy_stores, signature_of
from safer_instruct.construct.tasks import InduceTask, RespondTask, VerdictTask, load_template
from safer_instruct.construct.templates import induction_prompt
from safer_instruct.data.corpus import CorpusReader, CorpusSpec, resolve_corpus_path
from safer_instruct.data.leakage import LeakageSettings
from safer_instruct.errors import ConfigError, SaferInstructError
from safer_instruct.io import atomic_write_json, atomic_write_text
from safer_instruct.llm.config import parse_role

log = logging.getLogger(__name__)

# Role settings that change answers (and so the phase's results); concurrency, URLs and keys do not.
ANSWER_KEYS = ("model", "backend", "temperature", "max_tokens", "top_p", "seed", "stop")
EXPERT_PHASES = ("filter_instructions", "respond", "filter_responses")
LLM_PHASES = ("induce", *EXPERT_PHASES)
VERDICT_PHASES = ("filter_instructions", "filter_responses")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def selected_phases(cfg: DictConfig) -> list[str]:
    """`phases=[...]`, checked, in chain order."""
    if cfg.get("stages") is not None:  # the key's name before construct's units were called phases
        raise ConfigError(f"stages={_plain(cfg.stages)}: construct's units are now called phases; "
                          f"write phases=[...] (choose from {', '.join(PHASE_ORDER)})")  # fmt: skip
    names = [str(p) for p in (_plain(cfg.phases) or [])]
    unknown = [p for p in names if p not in PHASE_ORDER]
    if unknown:
        raise ConfigError(f"phases: unknown phase(s) {unknown}; choose from {', '.join(PHASE_ORDER)}")
    if not names:
        raise ConfigError(f"phases is empty; choose from {', '.join(PHASE_ORDER)}")
    return [p for p in PHASE_ORDER if p in names]


def truncation_policies(cfg: DictConfig) -> dict[str, str]:
    """`on_truncated.<phase>` for every LLM phase: drop (default) or flag, checked."""
    from safer_instruct.construct.tasks import check_on_truncated

    node = _plain(cfg.get("on_truncated")) or {}
    unknown = sorted(set(node) - set(LLM_PHASES))
    if unknown:
        raise ConfigError(f"on_truncated: unknown phase(s) {unknown}; the phases that ask a model are {', '.join(LLM_PHASES)}")
    return {phase: check_on_truncated(phase, str(node.get(phase) or "drop")) for phase in LLM_PHASES}


def corpus_signature(spec: CorpusSpec) -> dict[str, Any]:
    """The corpus settings plus the file's size and time, so that an edited corpus restarts induce."""
    payload = dict(vars(spec))
    if ":" not in spec.path or spec.path.startswith("conf:"):
        path = resolve_corpus_path(spec.path)
        if path.is_file():
            stat = path.stat()
            payload["file"] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return payload


def _role_answer_settings(cfg: DictConfig, role: str) -> dict[str, Any]:
    node = _plain(cfg.get(role)) or {}
    return {key: node.get(key) for key in ANSWER_KEYS}


class ConstructRun:
    """One `safer-instruct construct` run in one out_dir."""

    def __init__(self, cfg: DictConfig, out_dir: str | Path):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.phases = selected_phases(cfg)
        self.corpus_spec = CorpusSpec.from_config(_plain(cfg.corpus))
        self.on_truncated = truncation_policies(cfg)
        self.induction = induction_prompt(str(cfg.inducer.model), cfg.induce.get("reverse_prompt") or None)
        self.templates = {name: load_template(name, _plain(cfg.prompts.get(name))) for name in EXPERT_PHASES}
        self.heuristics = InstructionHeuristics.from_config(_plain(cfg.filter_instructions.heuristics))
        self.signatures = self._signatures()
        adopt_legacy_stores(self.out_dir)
        self.stores = {name: PhaseStore(self.out_dir, name, self.signatures[name]) for name in PHASE_ORDER}

    # -- settings

    def template_tags(self) -> dict[str, str]:
        return {"reverse": self.induction.template.tag,
                **{name: tpl.tag for name, tpl in self.templates.items()}}  # fmt: skip

    def _signatures(self) -> dict[str, str]:
        cfg = self.cfg
        payloads = {
            "induce": {"corpus": corpus_signature(self.corpus_spec), "template": self.induction.describe(),
                       "inducer": _role_answer_settings(cfg, "inducer"), "induce": _plain(cfg.induce)},
            "filter_instructions": {"heuristics": vars(self.heuristics), "settings": _plain(cfg.filter_instructions),
                                    "template": self.templates["filter_instructions"].to_dict()},
            "respond": {"settings": _plain(cfg.respond), "template": self.templates["respond"].to_dict()},
            "filter_responses": {"settings": _plain(cfg.filter_responses),
                                 "template": self.templates["filter_responses"].to_dict()},
            "assemble": {"settings": _plain(cfg.assemble), "source": cfg.dataset.source,
                         "tags": self.template_tags(), "models": self.models()},
        }  # fmt: skip
        signatures: dict[str, str] = {}
        for name in PHASE_ORDER:
            payload = dict(payloads[name])
            if name in LLM_PHASES:
                payload["on_truncated"] = self.on_truncated[name]
            if name in EXPERT_PHASES and (name != "filter_instructions" or cfg.filter_instructions.expert_check):
                payload["expert"] = _role_answer_settings(cfg, "expert")
            if name in VERDICT_PHASES and cfg[name].expert_check and self.verdict_prefill is not None:
                payload["verdict_prefill"] = self.verdict_prefill  # only when set: unprefilled runs keep theirs
            if name in UPSTREAM:
                payload["upstream"] = signatures[UPSTREAM[name]]
            signatures[name] = signature_of(payload)
        return signatures

    @functools.cached_property
    def expert_prefill(self) -> str | None:
        """The expert's `verdict_prefill` as configured: the checks ask with it, and the LLM session
        leaves it out (with a warning) where the expert's backend cannot send it."""
        return parse_role("expert", self.cfg.expert).verdict_prefill

    @functools.cached_property
    def verdict_prefill(self) -> str | None:
        """The text the expert's pass/fail answers start with, as sent (None: not prefilled, or no check on).
        Worked out once: every output row's provenance records it."""
        if not any(self.cfg[name].expert_check for name in VERDICT_PHASES):
            return None
        return parse_role("expert", self.cfg.expert).verdict_prefill_sent

    def models(self) -> dict[str, str]:
        return {"inducer": str(self.cfg.inducer.model), "expert": str(self.cfg.expert.model)}

    def provenance(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": row["id"], "sample_index": int(row.get("sample_index", 0)), "corpus": self.corpus_spec.label,
                **self.models(), "templates": self.template_tags(), "verdict_prefill": self.verdict_prefill,
                "truncated": list(row.get("truncated") or [])}  # fmt: skip

    # -- phases

    def build_phase(self, name: str):
        cfg = self.cfg
        if name == "induce":
            task = InduceTask(self.induction.render, int(cfg.induce.samples_per_text), _plain(cfg.induce.stop) or (),
                              chat=bool(cfg.induce.chat), on_truncated=self.on_truncated[name])  # fmt: skip
            return InducePhase(task, CorpusReader(self.corpus_spec, self.out_dir / "quarantine.jsonl"))
        if name == "filter_instructions":
            task = VerdictTask(name, self.templates[name], "instruction_check", prefill=self.expert_prefill,
                               on_truncated=self.on_truncated[name])  # fmt: skip
            return ExpertPhase(name, task, enabled=bool(cfg.filter_instructions.expert_check),
                              pre_check=self.heuristics.pre_check)  # fmt: skip
        if name == "respond":
            return ExpertPhase(name, RespondTask(self.templates[name], self.on_truncated[name]))
        if name == "filter_responses":
            task = VerdictTask(name, self.templates[name], "response_check", prefill=self.expert_prefill,
                               on_truncated=self.on_truncated[name])  # fmt: skip
            return ExpertPhase(name, task, enabled=bool(cfg.filter_responses.expert_check))
        guard = self.leakage_guard
        return AssemblePhase(guard, self.provenance, str(cfg.dataset.source), test_size=float(cfg.assemble.test_size),
                             seed=int(cfg.assemble.seed), dedup=bool(cfg.assemble.dedup),
                             near_duplicate_threshold=float(cfg.assemble.near_duplicate_threshold))  # fmt: skip

    def pending(self) -> list[str]:
        return [name for name in self.phases if not self.stores[name].is_done()]

    def roles_needed(self, pending: list[str]) -> dict[str, Any]:
        roles = {}
        if "induce" in pending:
            roles["inducer"] = self.cfg.inducer
        expert_used = {"filter_instructions": self.cfg.filter_instructions.expert_check, "respond": True,
                       "filter_responses": self.cfg.filter_responses.expert_check}  # fmt: skip
        if any(expert_used[name] for name in pending if name in expert_used):
            roles["expert"] = self.cfg.expert
        return roles

    @functools.cached_property
    def leakage_guard(self):
        """The evaluation prompts no pair may match: `assemble.leakage`, the settings of a training stage's `leakage`."""
        return LeakageSettings.from_config(self.cfg.assemble.get("leakage"), "assemble.leakage").guard()

    def check_inputs(self) -> None:
        if "assemble" in self.phases:
            self.leakage_guard  # noqa: B018 - a required prompt set that is missing stops the run before any LLM call
        for name in self.phases:
            upstream = UPSTREAM.get(name)
            if upstream and upstream not in self.phases and not self.stores[upstream].is_done():
                raise ConfigError(
                    f"phase '{name}' needs the finished output of '{upstream}' in {self.out_dir} (made with the "
                    f"same settings); add {upstream} to phases or run it first"
                )

    def run(self) -> dict[str, Any]:
        from filelock import FileLock, Timeout

        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Two runs appending to the same progress files would interleave; a killed run's lock is
        # released by the OS, so a rerun after SIGKILL is never blocked.
        lock = FileLock(str(self.out_dir / ".construct.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise SaferInstructError(f"another construct run is using {self.out_dir}; wait for it or choose "
                                     "another out_dir") from None  # fmt: skip
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> dict[str, Any]:
        self.check_inputs()
        pending = self.pending()
        skipped = [name for name in self.phases if name not in pending]
        if skipped:
            log.info("phases already finished in %s (kept): %s", self.out_dir, ", ".join(skipped))
        failures_path = self.out_dir / "failures.jsonl"
        failures_path.touch()
        with ExitStack() as stack:

            @functools.cache
            def session():  # opened on the first request, if any
                from safer_instruct.llm import LLMSession

                return stack.enter_context(LLMSession(roles=self.roles_needed(pending), cache_dir=self.cfg.cache.dir,
                                                      failures_path=failures_path,
                                                      budget_usd=self.cfg.llm.get("budget_usd")))  # fmt: skip

            ctx = PhaseContext(self.out_dir, RoleRunner(lambda role: session().role(role)), self.stores)
            for name in pending:
                log.info("phase %s", name)
                info = self.build_phase(name).run(ctx)
                funnel = info["funnel"]
                log.info("phase %s: %d in, %d out, dropped %s", name, funnel["in"], funnel["out"], funnel["dropped"])
        return self.write_outputs(ran=pending, kept=skipped)

    # -- outputs

    def finished(self) -> dict[str, dict[str, Any]]:
        """done.json of every phase finished under the current settings, in chain order."""
        return {name: self.stores[name].done_info() for name in PHASE_ORDER if self.stores[name].is_done()}

    def write_outputs(self, ran: list[str], kept: list[str]) -> dict[str, Any]:
        done = self.finished()
        run_info = {"run": {"phases_run": ran, "phases_kept": kept, "out_dir": str(self.out_dir)},
                    "provenance": {"models": self.models(), "templates": self.template_tags(),
                                   "reverse_prompt": {k: v for k, v in self.induction.describe().items() if k != "template"},
                                   "on_truncated": self.on_truncated,
                                   "verdict_prefill": self.verdict_prefill,
                                   "corpus": self.corpus_spec.path, "domain": str(self.cfg.dataset.domain)}}  # fmt: skip
        stats = outputs.build_stats(done, run_info)
        atomic_write_json(self.out_dir / "stats.json", stats)
        if stats["problems"]:
            raise SaferInstructError(f"the funnel does not add up: {'; '.join(stats['problems'])}")
        outputs.write_funnel_plot(self.out_dir / "funnel.png", stats)
        train, test = self.out_dir / "preference.jsonl", self.out_dir / "preference_test.jsonl"
        if "assemble" in done:
            outputs.write_datasets(self.out_dir, {"train": train, "test": test})
        templates = {"reverse": {"version": self.induction.template.tag, "template": self.induction.template.template},
                     **{name: {"version": tpl.tag, "template": tpl.template, "system": tpl.system}
                        for name, tpl in self.templates.items()}}  # fmt: skip
        dataset = self.cfg.dataset
        card = outputs.dataset_card(stats, title=str(dataset.title), tags=[str(t) for t in dataset.tags],
                                    content_warning=str(dataset.content_warning),
                                    purpose=str(dataset.purpose or ""), templates=templates,
                                    models=self.models(), verdict_prefill=self.verdict_prefill,
                                    examples=outputs.first_rows(train),
                                    corpus=self.corpus_spec.path)  # fmt: skip
        atomic_write_text(self.out_dir / "README.md", card)
        repo_id = self.cfg.push.get("repo_id")
        if repo_id and "assemble" in done:
            outputs.push_to_hub(self.out_dir, str(repo_id), private=bool(self.cfg.push.private))
        return stats


def run_construct(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the selected construction phases in out_dir; returns stats.json's content."""
    return ConstructRun(cfg, out_dir).run()
