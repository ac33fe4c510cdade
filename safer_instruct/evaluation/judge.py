"""The judge: versioned templates (prompt) and verdict reading (parse), over any LLM role (backend).

A template (`conf/judge_template/*.yaml`) is single (`harmless` / `harmful` for one answer) or pairwise
(`A` / `B` / `tie` between two answers). Its answer follows the verdict contract and is read by
`safer_instruct.verdict.parse_verdict`, the project's one verdict parser. Every item ends in one
status: `judged`, or one of the unjudged statuses below, which are counted and never read as harmless.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from safer_instruct.errors import ConfigError
from safer_instruct.llm.types import ChatRequest, Completion, Failure
from safer_instruct.verdict import JUDGE_VERDICTS, format_instructions, parse_verdict

PAIRWISE_VERDICTS = ("A", "B", "tie")

JUDGED = "judged"
UNPARSEABLE = "unparseable"  # the judge answered, but not in the verdict format
JUDGE_FAILED = "judge_failed"  # the request failed after retries (listed in failures.jsonl)
MISSING_RESPONSE = "missing_response"  # no answer to judge (an empty cell, a failed generation)
MISSING_REFERENCE = "missing_reference"  # pairwise: no reference answer for this prompt
TRUNCATED = "truncated"  # the verdict was cut off at judge.max_tokens: not read, even if it parses
UNJUDGED_STATUSES = (UNPARSEABLE, JUDGE_FAILED, MISSING_RESPONSE, MISSING_REFERENCE, TRUNCATED)

_PLACEHOLDER = re.compile(r"\{(prompt|response|response_a|response_b|format_instructions)\}")


@dataclass(frozen=True)
class JudgeTemplate:
    """A judging prompt with a name and version (both recorded with every judgement)."""

    name: str
    version: int | str
    kind: str
    system: str
    user: str

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> JudgeTemplate:
        missing = [key for key in ("name", "version", "kind", "user") if node.get(key) in (None, "")]
        if missing:
            raise ConfigError(f"judge template is missing {', '.join(missing)}")
        kind = str(node["kind"])
        if kind not in ("single", "pairwise"):
            raise ConfigError(f"judge template kind must be single or pairwise, got '{kind}'")
        template = cls(
            str(node["name"]), node["version"], kind, str(node.get("system") or ""), str(node["user"])
        )
        needed = {
            "single": ("{prompt}", "{response}"),
            "pairwise": ("{prompt}", "{response_a}", "{response_b}"),
        }
        absent = [p for p in needed[kind] if p not in template.user]
        if absent:
            raise ConfigError(
                f"judge template {template.id} ({kind}) lacks placeholder(s) {', '.join(absent)}"
            )
        return template

    @property
    def id(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def allowed(self) -> tuple[str, ...]:
        return JUDGE_VERDICTS if self.kind == "single" else PAIRWISE_VERDICTS

    def messages(self, **values: str) -> tuple[dict[str, str], ...]:
        """The chat messages for one item. Values are inserted in one pass, so braces or placeholder
        names inside a prompt or an answer are left as they are."""
        values = {"format_instructions": format_instructions(self.allowed), **values}
        user = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), self.user)
        if "{format_instructions}" not in self.user:
            user = f"{user}\n\n{values['format_instructions']}"
        system = ({"role": "system", "content": self.system},) if self.system else ()
        return (*system, {"role": "user", "content": user})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "kind": self.kind, "id": self.id}


@dataclass
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
    role: Any, requests: Iterable[ChatRequest], allowed: Iterable[str], stage: str
) -> dict[str, Judgement]:
    """Send judge requests through an LLM role (its concurrency, cache, retries); request id -> Judgement."""
    allowed = tuple(allowed)
    out: dict[str, Judgement] = {}
    for result in role.generate(requests, stage=stage):
        out[result.request_id] = read_result(result, allowed)
    return out


def single_requests(items: Iterable[Any], template: JudgeTemplate, prefix: str, prefill: str | None = None
                    ) -> Iterator[ChatRequest]:  # fmt: skip
    """One request per item that has an answer to judge (items without one are not sent). `prefill`:
    the text the judge's answer starts with (the role's `verdict_prefill`), or None."""
    for item in items:
        if item.response and item.response.strip():
            messages = template.messages(prompt=item.prompt, response=item.response)
            yield ChatRequest(id=f"{prefix}/{item.id}", messages=messages, prefill=prefill, metadata={"item": item.id})


def candidate_first(seed: int, item_id: str) -> bool:
    """Whether the answer under test is shown first in a pairwise comparison.

    Decided per item from (seed, item id) alone, so it does not depend on the order or the number of
    items, and a rerun shows every pair in the same order (and hits the cache).
    """
    return random.Random(f"{seed}:{item_id}").random() < 0.5


def pairwise_requests(
    items: Iterable[Any], references: Mapping[str, str], template: JudgeTemplate, prefix: str, seed: int,
    prefill: str | None = None,
) -> Iterator[ChatRequest]:
    """One request per item with both an answer and a reference; the order is `candidate_first`."""
    for item in items:
        reference = references.get(item.id) or ""
        if not (item.response and item.response.strip() and reference.strip()):
            continue
        first = candidate_first(seed, item.id)
        a, b = (item.response, reference) if first else (reference, item.response)
        yield ChatRequest(
            id=f"{prefix}/{item.id}",
            messages=template.messages(prompt=item.prompt, response_a=a, response_b=b),
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
