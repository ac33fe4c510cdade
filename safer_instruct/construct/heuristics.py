"""Cheap checks on induced instructions, run before any expert call (they cost nothing).

Each check returns the reason an instruction is dropped, or None. The reasons are the keys of the
funnel in stats.json:

* `too_short` / `too_long`: word count outside [min_words, max_words];
* `non_language`: mostly symbols or code, one word repeated, or (for instructions of four words or
  more) none of the configured function words - what a small or broken model emits;
* `pastes_text`: most of the instruction is copied from the corpus text (the model echoed its input
  instead of asking for it);
* `duplicate` / `near_duplicate`: the same instruction, exactly or nearly (see `dedup`), was kept
  already (the first in id order wins, so the result does not depend on arrival order).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from safer_instruct.construct.dedup import NearDuplicateIndex, normalize
from safer_instruct.errors import ConfigError
from safer_instruct.schema import node_values

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", re.UNICODE)

HEURISTIC_REASONS = ("too_short", "too_long", "non_language", "pastes_text", "duplicate", "near_duplicate")


@dataclass(frozen=True)
class InstructionHeuristics:
    """Thresholds of the heuristic filter (`filter_instructions.heuristics` in config)."""

    min_words: int = 3
    max_words: int = 150
    min_letter_ratio: float = 0.6
    min_unique_word_ratio: float = 0.3
    function_words: tuple[str, ...] = ()
    paste_ngram: int = 4
    max_paste_ratio: float = 0.6
    dedup: bool = True
    near_duplicate_threshold: float = 0.8

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> InstructionHeuristics:
        cfg = node_values(cfg, cls, "filter_instructions.heuristics")
        if "function_words" in cfg:
            cfg["function_words"] = tuple(str(w).lower() for w in cfg["function_words"] or ())
        heuristics = cls(**cfg)
        if heuristics.min_words > heuristics.max_words:
            raise ConfigError(f"heuristics.min_words ({heuristics.min_words}) exceeds max_words ({heuristics.max_words})")
        return heuristics

    def check(self, instruction: str, text: str) -> str | None:
        """The reason to drop one instruction judged on its own (duplicates are checked separately)."""
        words = _WORD.findall(instruction)
        if len(words) < self.min_words:
            # Garbage with few real words is "non_language" rather than merely short.
            return "non_language" if _letter_ratio(instruction) < self.min_letter_ratio else "too_short"
        if len(words) > self.max_words:
            return "too_long"
        if _letter_ratio(instruction) < self.min_letter_ratio:
            return "non_language"
        lowered = [w.lower() for w in words]
        if len(lowered) >= 6 and len(set(lowered)) / len(lowered) < self.min_unique_word_ratio:
            return "non_language"
        if self.function_words and len(lowered) >= 4 and not set(self.function_words).intersection(lowered):
            return "non_language"
        if self.max_paste_ratio < 1.0 and paste_ratio(instruction, text, self.paste_ngram) > self.max_paste_ratio:
            return "pastes_text"
        return None

    def deduplicator(self) -> InstructionDeduplicator:
        return InstructionDeduplicator(self)

    def pre_check(self) -> Callable[[Mapping[str, Any]], str | None]:
        """A fresh row check for `filter_instructions`: the per-row checks, then dedup among the rows that pass them."""
        dedup = self.deduplicator()
        return lambda row: (self.check(row["instruction"], row["text"])
                            or dedup.check_and_add(row["id"], row["instruction"]))  # fmt: skip


class InstructionDeduplicator:
    """Remembers kept instructions; says whether a new one repeats one of them."""

    def __init__(self, heuristics: InstructionHeuristics):
        self.enabled = heuristics.dedup
        self.index = NearDuplicateIndex(threshold=heuristics.near_duplicate_threshold)

    def check_and_add(self, key: str, instruction: str) -> str | None:
        if not self.enabled:
            return None
        verdict, _ = self.index.check_and_add(key, instruction)
        return None if verdict == "unique" else verdict


def _letter_ratio(text: str) -> float:
    """Share of letters among the non-space characters."""
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return 0.0
    return sum(ch.isalpha() for ch in visible) / len(visible)


def paste_ratio(instruction: str, text: str, n: int = 4) -> float:
    """Share of the instruction's words covered by word n-grams that also occur in the text."""
    inst = normalize(instruction).split()
    if not inst:
        return 0.0
    n = min(n, len(inst))
    source = normalize(text).split()
    grams = {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}
    covered: set[int] = set()  # word positions inside a shared n-gram
    for i in range(len(inst) - n + 1):
        if tuple(inst[i : i + n]) in grams:
            covered.update(range(i, i + n))
    return len(covered) / len(inst)


def clean_instruction(raw: str, stop_markers: Sequence[str] = ()) -> str:
    """The instruction part of a reversed model's output: cut at the first stop marker, trimmed."""
    for marker in stop_markers:
        if marker:
            raw = raw.split(marker, 1)[0]
    return raw.strip().strip('"').strip()
