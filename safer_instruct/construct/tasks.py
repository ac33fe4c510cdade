"""Tasks: a prompt template plus the parsing of its answer, for each LLM phase (distilabel's split).

A task turns an item (a dict row) into `ChatRequest`s for its LLM role and reads each answer back
into an `Outcome`: kept (with the fields the phase adds) or dropped (with the reason counted in the
funnel). Verdicts are read by the one parser, `safer_instruct.verdict.parse_verdict`; an answer it
cannot read is dropped as `unparseable_verdict`, never taken as a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from safer_instruct.construct.heuristics import clean_instruction
from safer_instruct.construct.store import DROPPED, FAILED, KEPT
from safer_instruct.errors import ConfigError
from safer_instruct.llm.types import ChatRequest, Completion, Failure
from safer_instruct.prompts import PromptTemplate
from safer_instruct.verdict import FILTER_VERDICTS, format_instructions, parse_verdict


@dataclass(frozen=True)
class Outcome:
    status: str  # kept | dropped | failed
    reason: str | None
    row: dict[str, Any]


def _failed(row: Mapping[str, Any], result: Failure) -> Outcome:
    return Outcome(FAILED, "llm_failure", {**row, "failure": result.reason})


TRUNCATED = "truncated"  # the drop reason of an answer cut off at max_tokens
ON_TRUNCATED = ("drop", "flag")


def check_on_truncated(phase: str, policy: str) -> str:
    if policy not in ON_TRUNCATED:
        raise ConfigError(f"on_truncated.{phase}={policy!r}: choose drop (the answer is dropped, counted as "
                          "`truncated`) or flag (kept, marked in the row's provenance)")  # fmt: skip
    return policy


def flagged(row: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """The row with `phase` added to its `truncated` list (answers kept although cut off)."""
    return {**row, "truncated": [*(row.get("truncated") or []), phase]}


class InduceTask:
    """Sample k instructions for one corpus text with the reversed model (the `inducer` role).

    Args:
        render_prompt: the reversed-model prompt for a response text and whether the text was cut to
            fit (`InductionPrompt.render`: the template and token budget the reversed model was
            trained with, so that induction sees exactly what training saw).
        samples: k, instructions sampled per text (distinct `sample_index`, distinct cache entries).
        stop_markers: text that ends an instruction (the model may go on to write a response).
        chat: send the rendered prompt as a user message instead of a plain completion prompt
            (for an instruction-tuned inducer rather than a reversed base model).
        on_truncated: `drop` or `flag` an instruction cut off at `inducer.max_tokens` (one whose
            answer stopped on the limit before any stop marker).
    """

    name = "induce"
    role = "inducer"

    def __init__(self, render_prompt: Callable[[str], tuple[str, bool]], samples: int,
                 stop_markers: Sequence[str] = (), chat: bool = False, on_truncated: str = "drop"):  # fmt: skip
        if samples < 1:
            raise ValueError("induce.samples_per_text must be at least 1")
        self.render_prompt, self.samples, self.chat = render_prompt, samples, chat
        self.stop_markers = tuple(stop_markers)
        self.on_truncated = check_on_truncated(self.name, on_truncated)
        self.inputs_cut = 0  # corpus texts cut to the prompt budget, in the last pass over the corpus

    def requests(self, row: Mapping[str, Any], skip: set[str] = frozenset()) -> Iterable[ChatRequest]:
        prompt, cut = self.render_prompt(row["text"])
        self.inputs_cut += int(cut)
        for index in range(self.samples):
            request_id = f"{row['source_id']}#{index:02d}"
            if request_id in skip:
                continue
            kwargs = {"messages": ({"role": "user", "content": prompt},)} if self.chat else {"prompt": prompt}
            yield ChatRequest(id=request_id, sample_index=index, stop=self.stop_markers or None,
                              metadata={"row": dict(row), "sample_index": index, "input_cut": cut}, **kwargs)  # fmt: skip

    def parse(self, result: Completion | Failure) -> Outcome:
        row = result.metadata["row"]
        base = {"id": result.request_id, "source_id": row["source_id"], "sample_index": result.metadata["sample_index"],
                "category": row["category"], "text": row["text"], "input_cut": bool(result.metadata.get("input_cut"))}  # fmt: skip
        if not result.ok:
            return _failed(base, result)
        instruction = clean_instruction(result.text, self.stop_markers)
        row_out = {**base, "instruction": instruction, "inducer_model": result.model}
        if not instruction:
            return Outcome(DROPPED, "empty_instruction", row_out)
        # A stop marker in the text means the instruction ended there, whatever stopped the answer later.
        if result.cut_off and not any(marker and marker in result.text for marker in self.stop_markers):
            if self.on_truncated == "drop":
                return Outcome(DROPPED, TRUNCATED, row_out)
            row_out = flagged(row_out, self.name)
        return Outcome(KEPT, None, row_out)


class VerdictTask:
    """An expert check that answers pass/fail (instruction filter, response filter).

    Args:
        prefill: text the expert's answer starts with (the role's `verdict_prefill`, e.g.
            `{"verdict": "`), so that a small model answers in the verdict format; None: not prefilled.
            The answer read back includes it.
    """

    role = "expert"

    def __init__(self, name: str, template: PromptTemplate, verdict_field: str, prefill: str | None = None,
                 on_truncated: str = "drop"):  # fmt: skip
        self.name, self.template, self.verdict_field, self.prefill = name, template, verdict_field, prefill
        self.on_truncated = check_on_truncated(name, on_truncated)

    def requests(self, row: Mapping[str, Any]) -> Iterable[ChatRequest]:
        values = {**row, "rejected": row.get("text", ""), "format_instructions": format_instructions(FILTER_VERDICTS)}
        yield ChatRequest(id=row["id"], messages=self.template.messages(**values), prefill=self.prefill,
                          metadata={"row": dict(row)})  # fmt: skip

    def parse(self, result: Completion | Failure) -> Outcome:
        row = result.metadata["row"]
        if not result.ok:
            return _failed(row, result)
        verdict = parse_verdict(result.text, FILTER_VERDICTS)
        row_out = {**row, self.verdict_field: {"verdict": verdict.verdict, "rationale": verdict.rationale},
                   "expert_model": result.model}  # fmt: skip
        if result.cut_off:
            if self.on_truncated == "drop":
                return Outcome(DROPPED, TRUNCATED, {**row_out, "raw": result.text[:500]})
            row_out = flagged(row_out, self.name)
        if verdict.verdict is None:
            return Outcome(DROPPED, "unparseable_verdict", {**row_out, "raw": result.text[:500]})
        if verdict.verdict != "pass":
            return Outcome(DROPPED, "expert_fail", row_out)
        return Outcome(KEPT, None, row_out)


class RespondTask:
    """The expert writes the preferred (chosen) response to a kept instruction.

    `on_truncated`: `drop` or `flag` a response cut off at `expert.max_tokens`.
    """

    name = "respond"
    role = "expert"

    def __init__(self, template: PromptTemplate, on_truncated: str = "drop"):
        self.template = template
        self.on_truncated = check_on_truncated(self.name, on_truncated)

    def requests(self, row: Mapping[str, Any]) -> Iterable[ChatRequest]:
        yield ChatRequest(id=row["id"], messages=self.template.messages(instruction=row["instruction"]),
                          metadata={"row": dict(row)})  # fmt: skip

    def parse(self, result: Completion | Failure) -> Outcome:
        row = result.metadata["row"]
        if not result.ok:
            return _failed(row, result)
        chosen = result.text.strip()
        row_out = {**row, "chosen": chosen, "expert_model": result.model, "finish_reason": result.finish_reason}
        if not chosen:
            return Outcome(DROPPED, "empty_response", row_out)
        if result.cut_off:
            if self.on_truncated == "drop":
                return Outcome(DROPPED, TRUNCATED, row_out)
            row_out = flagged(row_out, self.name)
        return Outcome(KEPT, None, row_out)


# Fields each template may use; the required ones must appear.
TEMPLATE_FIELDS = {
    "filter_instructions": ({"instruction", "text", "format_instructions"}, {"instruction", "text", "category",
                                                                              "format_instructions"}),
    "respond": ({"instruction"}, {"instruction"}),
    "filter_responses": ({"instruction", "chosen", "rejected", "format_instructions"},
                         {"instruction", "chosen", "rejected", "category", "format_instructions"}),
}  # fmt: skip


def load_template(name: str, cfg: Mapping[str, Any] | None) -> PromptTemplate:
    """The template of expert phase `name`, from `prompts.<name>`, checked against the fields it fills."""
    required, allowed = TEMPLATE_FIELDS[name]
    return PromptTemplate.from_config(cfg, f"prompts.{name}").expect(required, allowed)
