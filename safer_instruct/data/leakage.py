"""The leakage guard: evaluation prompts that must never be trained on, in any stage and any source.

One guard serves the construct stage (its `assemble` step drops constructed rows whose instruction
matches an evaluation prompt) and every training run (sft, dpo, reverse: rows of any source whose
prompt matches are removed before sampling and counted as `test_prompt_overlap` in
`data_stats.json`). A match is exact after normalisation (case, accents, punctuation and whitespace
ignored: `safer_instruct.construct.dedup.normalize`) or, with a threshold, near (estimated Jaccard
similarity of character 5-grams at or above it).

A row may offer several texts to check (`PreferenceRecord.provenance["leakage_texts"]`): an HH-RLHF
dialogue is checked by its first and last human turns and by the whole dialogue, because the
release's `hh` test prompts are single human turns (and one is a dialogue written out whole).

Training configs name the prompt sets under `leakage.sets` (each a `conf/prompt_set` preset);
`leakage.required` (every paper preset: `[release_test_set]`) names the sets that must be there: a
required set that is not configured, or whose file is missing, is a `ConfigError` naming the set and
its path, raised before any model is loaded. Other sets are skipped and reported when unreadable.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from safer_instruct.construct.dedup import NearDuplicateIndex, build_index
from safer_instruct.errors import ConfigError, SaferInstructError
from safer_instruct.schema import node_values

log = logging.getLogger(__name__)

OVERLAP_REASON = "test_prompt_overlap"


@dataclass
class LeakageGuard:
    """Evaluation prompts that must never appear, exactly or nearly, in training data.

    `threshold` None: exact matches (after normalisation) only.
    """

    index: NearDuplicateIndex
    sets: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None
    matches: Counter = field(default_factory=Counter)

    @classmethod
    def from_prompts(cls, prompts: Mapping[str, list[str]], threshold: float | None,
                     skipped: Mapping[str, str] | None = None) -> LeakageGuard:  # fmt: skip
        pairs = ((f"{name}/{i}", text) for name, texts in prompts.items() for i, text in enumerate(texts))
        return cls(build_index(pairs, threshold or 1.0), {name: len(texts) for name, texts in prompts.items()},
                   dict(skipped or {}), threshold)  # fmt: skip

    def check(self, prompt: str) -> str | None:
        """`eval_leak_exact`, `eval_leak_near` or None (no match)."""
        return self.check_any([prompt])

    def check_any(self, texts: Iterable[str]) -> str | None:
        """The first match among several texts of one row (exact before near)."""
        texts = [t for t in texts if t and t.strip()]
        for text in texts:
            if self.index.exact_match(text) is not None:
                return "eval_leak_exact"
        if self.threshold is not None:
            for text in texts:
                if self.index.near_match(text) is not None:
                    return "eval_leak_near"
        return None

    def filter(self, rows: list, texts_of: Callable[[Any], Iterable[str]], stats: Any) -> list:
        """The rows none of whose texts match; each removed row is counted in `stats` as test_prompt_overlap."""
        if not len(self.index):  # no evaluation prompts to guard
            return rows
        kept = []
        for row in rows:
            verdict = self.check_any(texts_of(row))
            if verdict is None:
                kept.append(row)
                continue
            self.matches[verdict] += 1
            stats.skip(OVERLAP_REASON)
        return kept

    def to_dict(self) -> dict[str, Any]:
        """What data_stats.json records: the sets checked (prompt counts), the ones skipped, the matches."""
        return {"sets": dict(self.sets), "skipped": dict(self.skipped), "threshold": self.threshold,
                "removed": {"exact": self.matches["eval_leak_exact"], "near": self.matches["eval_leak_near"]}}  # fmt: skip


def load_leakage_sets(sets: Mapping[str, Any] | None,
                      required: Collection[str] = ()) -> tuple[dict[str, list[str]], dict[str, str]]:  # fmt: skip
    """The prompts of each named prompt-set config (whole sets: `limit` and `sources` ignored).

    A set that cannot be read is skipped and reported; a `required` one is a ConfigError naming the
    set and its path (as is a required name that `sets` lacks).
    """
    from safer_instruct.evaluation.prompts import load_prompt_set

    sets = dict(sets or {})
    missing = sorted(set(required) - set(sets))
    if missing:
        raise ConfigError(f"leakage guard: required evaluation prompt set(s) {', '.join(missing)} not configured "
                          f"(leakage.sets has {', '.join(sorted(sets)) or 'none'}): add them, e.g. "
                          f"prompt_set@leakage.sets.{missing[0]}={missing[0]}")  # fmt: skip
    prompts: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for name, set_cfg in sorted(sets.items()):
        set_cfg = dict(set_cfg or {}, limit=None, sources=[])  # the guard checks the whole set
        try:
            prompts[name] = [item.prompt for item in load_prompt_set(set_cfg)]
        except SaferInstructError as err:
            if name in required:
                where = set_cfg.get("path") or f"{set_cfg.get('package')}:{set_cfg.get('resource')}"
                raise ConfigError(f"leakage guard: required evaluation prompt set '{name}' (path {where}) cannot be "
                                  f"read: {err}. Point it at the file (the release: SAFER_INSTRUCT_RELEASE=<folder>)"
                                  ) from None  # fmt: skip
            log.warning("leakage guard: prompt set %s not checked: %s", name, err)
            skipped[name] = str(err)
    return prompts, skipped


@dataclass
class LeakageSettings:
    """Evaluation prompt sets a run must not train on: `leakage.*` of train_sft/dpo/reverse, and `assemble.leakage.*`
    of construct (pairs matching them are left out of the dataset it builds)."""

    sets: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "name -> prompt set config (a conf/prompt_set preset, e.g. `prompt_set@leakage.sets.advbench: advbench` in "
        "the defaults list). Rows whose prompt matches one of their prompts are removed (test_prompt_overlap).")})
    threshold: float | None = field(default=0.7, metadata={"help": (
        "Near match: estimated Jaccard similarity of character 5-grams at or above which a prompt counts as the "
        "evaluation prompt (null: exact matches after normalisation only).")})
    required: list[str] = field(default_factory=list, metadata={"help": (
        "Names of sets that must be checked (every paper preset: [release_test_set]): one not in `sets`, or whose "
        "file is missing, is a ConfigError before any model loads. Other unreadable sets are skipped and reported.")})

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < float(self.threshold) <= 1.0:
            raise ConfigError(f"leakage.threshold must be in (0, 1] or null, got {self.threshold}")
        self.threshold = None if self.threshold is None else float(self.threshold)
        self.required = [str(name) for name in self.required or []]

    @classmethod
    def from_config(cls, node: Any, where: str = "leakage") -> LeakageSettings:
        return cls(**node_values(node, cls, where))

    def guard(self) -> LeakageGuard:
        prompts, skipped = load_leakage_sets(self.sets, self.required)
        return LeakageGuard.from_prompts(prompts, self.threshold, skipped)
