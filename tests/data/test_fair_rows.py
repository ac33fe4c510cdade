"""Fair rows: `data.sample_size` draws the same number of rows from sources of any size, stratified by
category, the same rows for the same seed; counts per category and per reason are recorded."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.data.sources import load_preferences, load_sft_examples, sample_rows
from safer_instruct.errors import ConfigError, DataError
from tests.data.test_sources import write_csv

RELEASE_HEADER = ["instruction", "rejected", "chosen", "label"]


def _release(folder: Path, hate: int, self_harm: int, illegal: int) -> Path:
    """A release-format folder: hate and self-harm rows with `rejected`, illegal rows without."""
    for category, n, rejected in (("hate", hate, "nasty"), ("self-harm", self_harm, "harmful"), ("illegal", illegal, "")):
        rows = [[f"{category} instruction number {i}", f"{rejected} {i}" if rejected else "", f"Safe answer {i}.", category]
                for i in range(n)]  # fmt: skip
        write_csv(folder / f"safer_instruct_{category}.csv", RELEASE_HEADER, rows)
    write_csv(folder / "test_set.csv", ["instruction", "label", "alpaca", "gpt4", "beaver"],
              [["hate instruction number 0", "si", "a", "g", "b"]])  # fmt: skip
    return folder


def _constructed(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"Constructed prompt {i}", "chosen": f"Refusal {i}.", "rejected": f"Harm {i}.",
             "category": "violence", "source_id": f"c-{i}"} for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ids(records) -> list[str]:
    return [r.source_id for r in records]


def test_two_sources_of_different_sizes_give_the_same_number_of_pairs_and_seeds_decide_the_rows(tmp_path):
    release = {"source": "safer_instruct_release", "path": str(_release(tmp_path / "rel", 30, 20, 25)),
               "categories": ["hate", "illegal", "self-harm"]}  # fmt: skip
    constructed = {"source": "constructed", "path": str(_constructed(tmp_path / "c" / "preference.jsonl", 120))}
    draw = {"sample_size": 16, "sample_seed": 7}

    small, small_stats = load_preferences({**release, **draw}, pairs_only=True)
    large, large_stats = load_preferences({**constructed, **draw}, pairs_only=True)
    assert len(small) == len(large) == 16
    # the release: 49 pairs (30 hate - 1 test prompt, 20 self-harm), its 25 illegal rows have no rejected
    assert small_stats.dropped == {"test_prompt_overlap": 1, "no_rejected": 25, "not_sampled": 33}
    assert small_stats.rows_read == 75 == 16 + sum(small_stats.dropped.values())
    assert small_stats.sample == {"size": 16, "seed": 7, "stratified_by": "category", "matched": True, "available": 49}
    # stratified: 29/49 and 20/49 of 16 -> 9.47 and 6.53 -> 9 + 7
    assert Counter(r.category for r in small) == {"hate": 9, "self-harm": 7}
    assert small_stats.categories == {"hate": {"loaded": 29, "pairs": 29, "used": 9},
                                      "illegal": {"loaded": 25, "pairs": 0, "used": 0},
                                      "self-harm": {"loaded": 20, "pairs": 20, "used": 7}}  # fmt: skip
    assert large_stats.sample["stratified_by"] is None and large_stats.dropped == {"not_sampled": 104}

    again, _ = load_preferences({**constructed, **draw}, pairs_only=True)
    other, _ = load_preferences({**constructed, **draw, "sample_seed": 8}, pairs_only=True)
    assert _ids(again) == _ids(large)
    assert _ids(other) != _ids(large) and len(other) == 16
    again_small, _ = load_preferences({**release, **draw}, pairs_only=True)
    other_small, _ = load_preferences({**release, **draw, "sample_seed": 8}, pairs_only=True)
    assert _ids(again_small) == _ids(small) and _ids(other_small) != _ids(small)

    # SFT of the same row draws among all rows, illegal included (it needs no rejected)
    sft, sft_stats = load_sft_examples({**release, **draw})
    assert len(sft) == 16 and sft_stats.sample["available"] == 74
    # 29, 25, 20 of 74 rows -> 6.27, 5.41, 4.32 of 16: floors 6 + 5 + 4, the largest remainder (illegal) +1
    assert {c: n["used"] for c, n in sft_stats.categories.items()} == {"hate": 6, "illegal": 6, "self-harm": 4}


def test_unmatched_runs_and_impossible_draws(tmp_path):
    constructed = {"source": "constructed", "path": str(_constructed(tmp_path / "c.jsonl", 10))}
    records, stats = load_preferences(constructed)
    assert len(records) == 10
    assert stats.sample == {"size": None, "seed": None, "stratified_by": None, "matched": False, "available": 10}
    with pytest.raises(DataError, match=r"sample_size=11 but only 10 rows"):
        load_preferences({**constructed, "sample_size": 11})
    with pytest.raises(ConfigError, match="data.sample_size must be >= 1"):
        load_preferences({**constructed, "sample_size": 0})
    with pytest.raises(ConfigError, match="data.stratify_by"):
        load_preferences({**constructed, "stratify_by": "label"})
    capped, capped_stats = load_preferences({**constructed, "sample_size": 8, "max_rows": 5})
    assert len(capped) == 5 and capped_stats.sample["matched"] is False
    assert capped_stats.dropped == {"not_sampled": 2, "cut_by_max_rows": 3}


def test_stratified_shares_follow_the_categories():
    rows = [PreferenceRecord(f"p{i}", "c", "r", category=c, source_id=str(i))
            for i, c in enumerate(["a"] * 60 + ["b"] * 30 + ["c"] * 10)]  # fmt: skip
    drawn, stratified = sample_rows(rows, 20, seed=1)
    assert stratified and Counter(r.category for r in drawn) == {"a": 12, "b": 6, "c": 2}
    assert [int(r.source_id) for r in drawn] == sorted(int(r.source_id) for r in drawn)  # original order kept
    # largest remainders round up: 7 of 60/30/10 -> 4.2, 2.1, 0.7 -> 4 + 2 + 1
    assert Counter(r.category for r in sample_rows(rows, 7, seed=1)[0]) == {"a": 4, "b": 2, "c": 1}
    flat, stratified = sample_rows(rows, 20, seed=1, stratify_by="none")
    assert not stratified and len(flat) == 20
