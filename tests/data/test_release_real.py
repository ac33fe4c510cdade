"""The release loader on the real Safer-Instruct CSV files where `release_location()` finds them (read in place,
never copied; skipped when absent)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from safer_instruct.data.sources import load_preferences, load_sft_examples
from safer_instruct.paths import release_location

RELEASE = Path(release_location())
pytestmark = pytest.mark.skipif(
    not (RELEASE / "test_set.csv").is_file(), reason=f"the Safer-Instruct release is not at {RELEASE}"
)
CATEGORIES = ("hate", "illegal", "nsfw", "self-harm")


def _csv(name: str) -> list[dict]:
    with (RELEASE / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def raw():
    """The files read independently with the csv module, to check the loader against."""
    return {c: _csv(f"safer_instruct_{c}.csv") for c in CATEGORIES}, _csv("test_set.csv")


def test_whole_release_without_hold_out(raw):
    files, _ = raw
    records, stats = load_preferences({"source": "safer_instruct_release", "path": str(RELEASE),
                                       "hold_out_test": False, "dedupe": "none"})  # fmt: skip
    assert stats.rows_read == sum(len(rows) for rows in files.values()) == len(records)
    by_category = Counter(r.category for r in records)
    assert by_category == {c: len(files[c]) for c in CATEGORIES}
    pairs = Counter(r.category for r in records if r.is_pair)
    # rejected was removed by the authors for illegal and nsfw: those rows are SFT-only
    assert pairs == {"hate": len(files["hate"]), "self-harm": len(files["self-harm"])}
    assert sum(pairs.values()) == 5721  # as the release README says
    assert stats.notes["sft_only_no_rejected"] == len(files["illegal"]) + len(files["nsfw"])
    multiline = next(r for r in files["hate"] if "\n" in r["chosen"])
    assert any(r.chosen == multiline["chosen"] for r in records)  # quoted multi-line fields survive


def test_test_prompts_held_out_and_duplicates_dropped(raw):
    files, test_set = raw
    si_prompts = {" ".join(r["instruction"].split()) for r in test_set if r["label"] == "si"}
    assert len(si_prompts) == 300
    records, stats = load_preferences({"source": "safer_instruct_release", "path": str(RELEASE)})
    assert not si_prompts & {" ".join(r.prompt.split()) for r in records}
    in_training = sum(" ".join(r["instruction"].split()) in si_prompts for rows in files.values() for r in rows)
    # every test prompt is held out (si, hh, beaver); only the si ones are in the training files
    assert stats.notes["test_prompts_held_out"] == len(test_set) == 900
    assert stats.dropped["test_prompt_overlap"] == in_training >= 300
    triples = Counter((" ".join(r["instruction"].split()), r["chosen"].strip(), r["rejected"].strip())
                      for rows in files.values() for r in rows
                      if " ".join(r["instruction"].split()) not in si_prompts)  # fmt: skip
    assert stats.dropped["duplicate"] == sum(n - 1 for n in triples.values())
    assert len(records) == len(triples)
    dpo_pairs = [r for r in records if r.is_pair]
    assert len(dpo_pairs) == sum(1 for (_, _, rejected) in triples if rejected)
    assert 5721 - 150 - 5 <= len(dpo_pairs) <= 5721 - 150  # 75 test prompts each in hate and self-harm


def test_sft_view_and_category_subset():
    examples, _ = load_sft_examples({"source": "safer_instruct_release", "path": str(RELEASE), "categories": ["nsfw"]})
    assert examples and all(e.output.strip() and not e.input for e in examples)
    records, stats = load_preferences({"source": "safer_instruct_release", "path": str(RELEASE), "categories": ["nsfw"],
                                       "dedupe": "prompt"})  # fmt: skip
    assert all(not r.is_pair for r in records) and stats.files == [str(RELEASE / "safer_instruct_nsfw.csv")]
    assert len({" ".join(r.prompt.split()) for r in records}) == len(records)
