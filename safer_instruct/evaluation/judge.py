"""The judge: versioned templates (prompt) and verdict reading (parse), over any LLM role (backend).

A template (`conf/judge_template/*.yaml`, a `safer_instruct.prompts.PromptTemplate`) is single
(`{response}`: `harmless` / `harmful` for one answer) or pairwise (`{response_a}`, `{response_b}`:
`A` / `B` / `tie` between two answers); its tag `name@vN` is recorded with every judgement. Its answer follows the verdict contract and is read by
`safer_instruct.verdict.parse_verdict`, the project's one verdict parser. Every item ends in one
status: `judged`, or one of the unjudged statuses below, which are counted and never read as harmless.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from safer_instruct.errors import ConfigError
from safer_instruct.llm.types import ChatRequest, Completion, Failure
from safer_instruct.prompts import PromptTemplate
from safer_instruct.verdict import JUDGE_VERDICTS, format_instructions, parse_verdict

PAIRWISE_VERDICTS = ("A", "B", "tie")

JUDGED = "judged"
UNPARSEABLE = "unparseable"  # the judge answered, but not in the verdict format
JUDGE_FAILED = "judge_failed"  # the request failed after retries (listed in failures.jsonl)
MISSING_RESPONSE = "missing_response"  # no answer to judge (an empty cell, a failed generation)
MISSING_REFERENCE = "missing_reference"  # pairwise: no reference answer for this prompt
TRUNCATED = "truncated"  # the verdict was cut off at judge.max_tokens: not read, even if it parses

# What each kind of template is given: (required fields, also allowed), and the verdicts it asks for.
KIND_FIELDS = {
    "single": ({"prompt", "response"}, {"format_instructions"}),
    "pairwise": ({"prompt", "response_a", "response_b"}, {"format_instructions"}),
}
KIND_VERDICTS = {"single": JUDGE_VERDICTS, "pairwise": PAIRWISE_VERDICTS}


def load_template(node: Mapping[str, Any] | None, key: str, kind: str) -> PromptTemplate:
    """The judging template at config key `key` (e.g. `judge_template`), checked to be of `kind`."""
    template = PromptTemplate.from_config(node, key)
    if kind == "single" and kind_of(template) == "pairwise":
        raise ConfigError(f"{key} must be a single-answer template ({{prompt}}, {{response}}); {template.tag} is pairwise")
    if kind == "pairwise" and kind_of(template) == "single":
        raise ConfigError(f"{key} must be a pairwise template ({{prompt}}, {{response_a}}, {{response_b}}); "
                          f"{template.tag} is single-answer")  # fmt: skip
    required, allowed = KIND_FIELDS[kind]
    return template.expect(required, allowed)


def kind_of(template: PromptTemplate) -> str:
    """`pairwise` for a template that shows two answers ({response_a}, {response_b}), else `single`."""
    return "pairwise" if template.fields & {"response_a", "response_b"} else "single"


def verdicts(template: PromptTemplate) -> tuple[str, ...]:
    """The verdicts a template asks for: harmless/harmful, or A/B/tie."""
    return KIND_VERDICTS[kind_of(template)]


def messages(template: PromptTemplate, **values: str) -> tuple[dict[str, str], ...]:
    """The chat messages for one item; the verdict contract is appended when the template does not place it."""
    contract = format_instructions(verdicts(template))
    chat = template.messages(format_instructions=contract, **values)
    if "format_instructions" in template.fields:
        return chat
    *system, user = chat
    return (*system, {**user, "content": f"{user['content']}\n\n{contract}"})


def describe(template: PromptTemplate) -> dict[str, Any]:
    """As recorded with every judgement (`id` is the tag)."""
    return {"name": template.name, "version": template.version, "kind": kind_of(template), "id": template.tag}


@dataclass(frozen=True)
class Judgement:
    """The outcome of judging one item (one row of judgements.jsonl, with the item's fields)."""

    status: str
    verdict: str | None = None
    rationale: str = ""
    raw: str | None = None
    reason: str | None = None
    model: str | None = None
    cached: bool | None = None
    latency_s: float | None = None

    @property
    def judged(self) -> bool:
        return self.status == JUDGED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The judgement of an item without an answer, by any judge: nothing is sent, the item stays unjudged.
NO_ANSWER = Judgement(MISSING_RESPONSE, reason="no answer to judge (empty or failed)")


def has_answer(item: Any) -> bool:
    """Whether an item has an answer to judge (not None, empty or only whitespace)."""
    return bool(item.response and item.response.strip())


def read_result(result: Completion | Failure, allowed: Iterable[str]) -> Judgement:
    """A judge's answer (or failure) as a Judgement; anything unreadable is unjudged, never harmless."""
    if not result.ok:
        return Judgement(JUDGE_FAILED, reason=result.reason, model=result.model or None)
    if result.cut_off:
        return Judgement(TRUNCATED, raw=result.text, reason="the answer was cut off at judge.max_tokens",
                         model=result.model, cached=result.cached, latency_s=result.latency_s)  # fmt: skip
    verdict = parse_verdict(result.text, tuple(allowed))
    if not verdict.parsed:
        reason = "empty answer" if not (result.text or "").strip() else "answer not in the verdict format"
        return Judgement(UNPARSEABLE, raw=result.text, reason=reason, model=result.model,
                         cached=result.cached, latency_s=result.latency_s)  # fmt: skip
    return Judgement(JUDGED, verdict.verdict, verdict.rationale, result.text, None, result.model,
                     result.cached, result.latency_s)  # fmt: skip


def judge_all(
    role: Any, requests: Iterable[ChatRequest], allowed: Iterable[str], phase: str
) -> dict[str, Judgement]:
    """Send judge requests through an LLM role (its concurrency, cache, retries); request id -> Judgement."""
    allowed = tuple(allowed)
    return {result.request_id: read_result(result, allowed) for result in role.generate(requests, phase=phase)}


def single_requests(items: Iterable[Any], template: PromptTemplate, prefix: str, prefill: str | None = None
                    ) -> Iterator[ChatRequest]:  # fmt: skip
    """One request per item that has an answer to judge (items without one are not sent). `prefill`:
    the text the judge's answer starts with (the role's `verdict_prefill`), or None."""
    for item in items:
        if has_answer(item):
            chat = messages(template, prompt=item.prompt, response=item.response)
            yield ChatRequest(id=f"{prefix}/{item.id}", messages=chat, prefill=prefill, metadata={"item": item.id})


def candidate_first(seed: int, item_id: str) -> bool:
    """Whether the answer under test is shown first in a pairwise comparison.

    Decided per item from (seed, item id) alone, so it does not depend on the order or the number of
    items, and a rerun shows every pair in the same order (and hits the cache).
    """
    return random.Random(f"{seed}:{item_id}").random() < 0.5


def pairwise_requests(
    items: Iterable[Any], references: Mapping[str, str], template: PromptTemplate, prefix: str, seed: int,
    prefill: str | None = None,
) -> Iterator[ChatRequest]:
    """One request per item with both an answer and a reference; the order is `candidate_first`."""
    for item in items:
        reference = references.get(item.id) or ""
        if not (has_answer(item) and reference.strip()):
            continue
        first = candidate_first(seed, item.id)
        a, b = (item.response, reference) if first else (reference, item.response)
        yield ChatRequest(
            id=f"{prefix}/{item.id}",
            messages=messages(template, prompt=item.prompt, response_a=a, response_b=b),
            prefill=prefill,
            metadata={"item": item.id, "candidate_first": first},
        )


def pairwise_outcome(verdict: str | None, first: bool) -> float | None:
    """Score of the answer under test: 1 win, 0 loss, 0.5 tie, None unjudged."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0.5
    candidate_label = "a" if first else "b"
    return 1.0 if verdict == candidate_label else 0.0
