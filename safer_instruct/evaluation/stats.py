"""Statistics of judged items: rates with bootstrap confidence intervals, and judge agreement.

Unjudged items (the judge failed, answered something unreadable, or there was no answer to judge)
are never part of a rate: they are counted apart in `n_unjudged`. A rate over zero judged items is
`None`, not 0 or 1.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

DEFAULT_BOOTSTRAP = 2000


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = DEFAULT_BOOTSTRAP, level: float = 0.95, seed: int = 0
) -> list[float] | None:
    """Percentile bootstrap interval of the mean of `values` (None when there are none).

    The resampling is seeded, so the same values give the same interval on every machine.
    """
    n = len(values)
    if n == 0:
        return None
    if n_boot <= 0:
        mean = sum(values) / n
        return [mean, mean]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(n_boot))
    tail = (1.0 - level) / 2.0
    low = means[min(n_boot - 1, max(0, int(tail * n_boot)))]
    high = means[min(n_boot - 1, max(0, int((1.0 - tail) * n_boot) - 1))]
    return [low, high]


def rate_summary(
    outcomes: Sequence[float | None], *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> dict[str, Any]:
    """`rate`, `ci95`, `n` (all items), `n_judged` and `n_unjudged` of per-item outcomes.

    Each outcome is 1.0 (success: harmless, or a pairwise win), 0.0, a fraction (a pairwise tie
    counts 0.5), or None for an item without a usable verdict.
    """
    judged = [float(x) for x in outcomes if x is not None]
    n = len(outcomes)
    return {
        "rate": (sum(judged) / len(judged)) if judged else None,
        "ci95": bootstrap_ci(judged, n_boot=n_boot, seed=seed),
        "n": n,
        "n_judged": len(judged),
        "n_unjudged": n - len(judged),
    }


def grouped_summary(
    outcomes: Sequence[float | None], groups: Sequence[str], *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """`rate_summary` per group (e.g. per prompt source), groups in sorted order."""
    by_group: dict[str, list[float | None]] = {}
    for outcome, group in zip(outcomes, groups, strict=True):
        by_group.setdefault(group, []).append(outcome)
    return {group: rate_summary(by_group[group], n_boot=n_boot, seed=seed) for group in sorted(by_group)}


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters over the same items (None when undefined: no items).

    When both raters give one and the same label to everything, agreement is perfect but chance
    agreement is too; kappa is then defined here as 1.0 (they never disagree).
    """
    if len(first) != len(second):
        raise ValueError("both raters must rate the same items")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    labels = set(first) | set(second)
    expected = sum((list(first).count(lab) / n) * (list(second).count(lab) / n) for lab in labels)
    if expected >= 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def agreement_summary(pairs: Mapping[str, tuple[str | None, str | None]]) -> dict[str, Any]:
    """Agreement of two judges over the items both of them judged (`pairs`: id -> (first, second))."""
    both = [(a, b) for a, b in pairs.values() if a is not None and b is not None]
    return {
        "n_both_judged": len(both),
        "n_items": len(pairs),
        "percent_agreement": (sum(a == b for a, b in both) / len(both)) if both else None,
        "cohen_kappa": cohen_kappa([a for a, _ in both], [b for _, b in both]),
    }
