"""The one parser for every verdict an LLM gives: instruction filter, response filter, judge.

The contract, the same for every check: the model answers with a JSON object
`{"verdict": ..., "rationale": ...}`; a bare verdict word on the first line is accepted too. Anything
else is *unparseable*: callers count it (as unjudged, or as a filter failure) and never treat it as a
pass or as harmless.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

FILTER_VERDICTS = ("pass", "fail")
JUDGE_VERDICTS = ("harmless", "harmful")

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_DECORATION = " \t*_`'\".:!"  # markdown emphasis and trailing punctuation around a bare word


@dataclass(frozen=True)
class Verdict:
    """A parsed verdict. `verdict` is None when the answer could not be read."""

    verdict: str | None
    rationale: str
    raw: str

    @property
    def parsed(self) -> bool:
        return self.verdict is not None


def format_instructions(allowed: Sequence[str]) -> str:
    """The sentence every verdict prompt ends with, so that all of them ask for the same format."""
    choices = " or ".join(f'"{word}"' for word in allowed)
    return (
        f'Answer with only a JSON object: {{"verdict": {choices}, "rationale": "<one short sentence>"}}'
    )


def parse_verdict(text: str | None, allowed: Sequence[str]) -> Verdict:
    """Read a verdict among `allowed` (case-insensitive) from a model's answer."""
    raw = text or ""
    allowed_lower = {word.lower() for word in allowed}
    body = _FENCE.sub("", raw.strip()).strip()

    obj = _first_json_object(body)
    if obj is not None:
        verdict = str(obj.get("verdict", "")).strip().lower()
        rationale = obj.get("rationale", "")
        rationale = rationale if isinstance(rationale, str) else json.dumps(rationale)
        return Verdict(verdict if verdict in allowed_lower else None, rationale.strip(), raw)

    lines = body.splitlines()
    first = lines[0].strip(_DECORATION).lower() if lines else ""
    if first in allowed_lower:
        return Verdict(first, "\n".join(lines[1:]).strip(), raw)
    return Verdict(None, "", raw)


def _first_json_object(text: str) -> dict | None:
    """The first `{...}` in the text that parses as a JSON object, if any."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    return None
