"""The published Safer-Instruct release (CSV files of the paper's data) as a preference source.

The release (GitHub `uscnlp-lime/safer-instruct`, folder `sample_data/`; Hub mirror
`lime-nlp/safer-instruct`) has one CSV per category, `safer_instruct_<category>.csv` with columns
`instruction, rejected, chosen, label`, and `test_set.csv` (`instruction, label, alpaca, gpt4, beaver`).
Its quirks, handled here:

* `rejected` is empty in every row of `illegal` and `nsfw`: those rows load with `rejected=None`,
  usable for SFT only. DPO on the release therefore trains on the hate and self-harm rows only
  (it drops the others as `no_rejected`; data_stats.json shows loaded / pairs / used per category);
* the 300 `si` prompts of `test_set.csv` also appear verbatim in the training files: with
  `hold_out_test: true` every prompt of `test_set.csv` (si, hh and beaver) is removed from training
  (exact match after normalisation, counted as `test_prompt_overlap`), so evaluating on the test set
  does not leak. The training runs' leakage guard (`leakage.sets`) checks again, with near matches;
* instructions repeat: exact duplicate rows are dropped by `dedupe: exact`; `dedupe: prompt` keeps
  one row per instruction;
* about 890 `chosen` texts claim to be "developed by OpenAI": counted, dropped with `drop_openai_identity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safer_instruct.data.leakage import OVERLAP_REASON, LeakageGuard
from safer_instruct.data.loading import (
    LoadStats,
    SourceSpec,
    _help,
    hub_snapshot,
    is_hub_id,
    parsed_rows,
    text_field,
)
from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.errors import ConfigError, DataError
from safer_instruct.io import iter_rows

RELEASE_CATEGORIES = ("hate", "illegal", "nsfw", "self-harm")
TEST_FILE = "test_set.csv"
TEST_LABELS = ("si", "hh", "beaver")  # where test prompts came from: Safer-Instruct, HH-RLHF, BeaverTails
OPENAI_IDENTITY = "developed by openai"


@dataclass
class ReleaseSpec(SourceSpec):
    """The Safer-Instruct CSV release (`data=safer_instruct_release`)."""

    categories: list[str] = _help(None, "Categories to read (files safer_instruct_<category>.csv).",
                                  factory=lambda: list(RELEASE_CATEGORIES))
    hold_out_test: bool = _help(True, "Remove every prompt of test_set.csv (900: labels si, hh, beaver) from training "
                                      "(counted as test_prompt_overlap; 300 si prompts are in the training files).")
    drop_openai_identity: bool = _help(False, "Drop rows whose chosen text says it was developed by OpenAI.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.categories = [str(c) for c in self.categories]
        unknown = [c for c in self.categories if c not in RELEASE_CATEGORIES]
        if unknown or not self.categories:
            raise ConfigError(f"data.categories {unknown or '[]'} invalid: choose from {', '.join(RELEASE_CATEGORIES)}")


def release_folder(spec: ReleaseSpec, stats: LoadStats | None = None) -> Path:
    folder = hub_snapshot(spec.path, spec.revision, stats) if is_hub_id(spec.path) else Path(spec.path).expanduser()
    if spec.data_dir:
        folder = folder / spec.data_dir
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise DataError("release folder not found", path=str(folder))
    if not (folder / f"safer_instruct_{spec.categories[0]}.csv").is_file() and (folder / "sample_data").is_dir():
        folder = folder / "sample_data"  # a clone of the GitHub repository
    return folder


def load_test_prompts(folder: Path, labels: tuple[str, ...] = TEST_LABELS) -> dict[str, list[str]]:
    """The instructions of `test_set.csv` by source label (only the given labels)."""
    path = folder / TEST_FILE
    if not path.is_file():
        raise DataError(f"{TEST_FILE} is missing, so its test prompts cannot be held out (or set data.hold_out_test=false)",
                        path=str(folder))  # fmt: skip
    prompts: dict[str, list[str]] = {}
    for row in iter_rows(path):
        if row.error:
            raise DataError(row.error, path=str(path), row=row.number)
        label = str(row.data.get("label") or "")
        if label in labels:
            prompts.setdefault(label, []).append(text_field(row.data, "instruction", path=str(path), row=row.number))
    return prompts


def parse_release_row(data: dict[str, Any], *, path: str, row: int) -> tuple[str, str, Any]:
    """(instruction, chosen, rejected) of a category file's row; `rejected` may be empty but not missing."""
    prompt = text_field(data, "instruction", path=path, row=row)
    chosen = text_field(data, "chosen", path=path, row=row)
    rejected = data.get("rejected")
    if rejected is None and "rejected" not in data:
        raise DataError("column is missing", path=path, row=row, field="rejected")
    return prompt, chosen, rejected


def load_release(spec: ReleaseSpec, stats: LoadStats) -> list[PreferenceRecord]:
    folder = release_folder(spec, stats)
    held_out = None
    if spec.hold_out_test:
        test_prompts = load_test_prompts(folder)
        held_out = LeakageGuard.from_prompts(test_prompts, threshold=None)  # exact, after normalisation
        stats.notes["test_prompts_held_out"] = sum(len(texts) for texts in test_prompts.values())
    records: list[PreferenceRecord] = []
    for category in spec.categories:
        path = folder / f"safer_instruct_{category}.csv"
        if not path.is_file():
            raise DataError(f"release file for category '{category}' is missing", path=str(path))
        stats.files.append(str(path))
        rows = ((str(path), row) for row in iter_rows(path))
        for _, row, (prompt, chosen, rejected) in parsed_rows(spec, stats, parse_release_row, rows):
            if held_out is not None and held_out.check(prompt) is not None:
                stats.skip(OVERLAP_REASON)
                continue
            if OPENAI_IDENTITY in chosen.lower():
                stats.notes["chosen_claims_openai_identity"] += 1
                if spec.drop_openai_identity:
                    stats.skip("openai_identity")
                    continue
            record = PreferenceRecord(
                prompt=prompt,
                chosen=chosen,
                rejected=rejected if rejected and rejected.strip() else None,
                category=str(row.data.get("label") or category),
                source="safer_instruct_release",
                source_id=f"{path.name}:{row.number}",
            )
            if not record.is_pair:
                stats.notes["sft_only_no_rejected"] += 1
            records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    """`python -m safer_instruct.data.release [--revision COMMIT]`: find the release, fetching the Hub copy
    into the Hugging Face cache when no local copy exists and the network allows (`make demo` runs this with
    the offline switches off, then the demo offline). Prints one line: where it is read from, or why it
    cannot be. Exits 0 either way: without the release the demo runs without its slice."""
    import argparse

    from safer_instruct.paths import find_release

    parser = argparse.ArgumentParser(prog="python -m safer_instruct.data.release", description=main.__doc__)
    parser.add_argument("--revision", default="pinned", help="commit of the Hub copy to fetch (default: the one "
                        "pinned in conf/data/safer_instruct_release.yaml, else the newest)")
    args = parser.parse_args(argv)
    print(find_release(fetch=True, revision=args.revision).line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
