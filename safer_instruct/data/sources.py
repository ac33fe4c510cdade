"""Data sources for training, all producing the project's schemas, chosen by `data.source`.

Preference sources (`PreferenceRecord`; SFT trains on `chosen`, DPO on pairs):

* `constructed`: the output of `safer-instruct construct` (its out_dir, `preference.jsonl`, or the
  `datasets` folder);
* `safer_instruct_release`: the published CSV release (`safer_instruct.data.release`);
* `hh_rlhf`: Anthropic HH-RLHF transcripts (`safer_instruct.data.hh_rlhf`);
* `pku_saferlhf`: PKU-SafeRLHF pairs (`safer_instruct.data.pku_saferlhf`);
* `mixture`: several of the above, each with a weight (alignment-handbook semantics: the fraction
  of that source's rows to use; above 1 repeats rows).

Instruction sources (`InstructionRecord`, for SFT and reversed instruction tuning): `instructions`
(Alpaca, ShareGPT or messages format). SFT accepts both kinds.

Every load runs the same steps, each counted in `LoadStats` (data_stats.json): read and parse
(malformed rows), the leakage guard (`test_prompt_overlap`), de-duplication (`duplicate`), for DPO
the rows without a rejected response (`no_rejected`), the draw of `data.sample_size` rows
(`not_sampled`), `data.max_rows` (`cut_by_max_rows`); per category, the rows loaded, the pairs among
them and the rows used.

    records, stats = load_preferences(cfg.data, guard=guard, pairs_only=True)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safer_instruct.data.hh_rlhf import HHRLHFSpec, load_hh_rlhf
from safer_instruct.data.instructions import InstructionRecord, InstructionSpec, load_instructions
from safer_instruct.data.leakage import LeakageGuard
from safer_instruct.data.loading import LoadStats, SampleSpec, SourceSpec, _help, normalize_text, parsed_rows
from safer_instruct.data.pku_saferlhf import PKUSafeRLHFSpec, load_pku_saferlhf
from safer_instruct.data.release import ReleaseSpec, load_release
from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.errors import ConfigError, DataError
from safer_instruct.schema import node_values, plain


@dataclass
class ConstructedSpec(SourceSpec):
    """The output of `safer-instruct construct` (`data=constructed`)."""


def _constructed_location(path: str) -> str:
    """A construct out_dir means its preference.jsonl (or its datasets folder if the JSONL is absent)."""
    folder = Path(path).expanduser()
    if folder.is_dir() and (folder / "preference.jsonl").is_file():
        return str(folder / "preference.jsonl")
    if folder.is_dir() and (folder / "datasets").is_dir():
        return str(folder / "datasets")
    return path


def load_constructed(spec: ConstructedSpec, stats: LoadStats) -> list[PreferenceRecord]:
    spec.path = _constructed_location(spec.path)
    records = []
    for label, row, record in parsed_rows(spec, stats, PreferenceRecord.from_mapping):
        record.source = record.source or "constructed"
        record.source_id = record.source_id or f"{label}:{row.number}"
        records.append(record)
    return records


@dataclass
class MixtureSpec(SampleSpec):
    """Several sources mixed by weight (`data=mixture_*`): preference sources for DPO; for SFT, instruction
    sources may sit beside them (their rows as they are, the preference rows' chosen responses)."""

    source: str = _help("mixture", "Always 'mixture'.")
    components: list[Any] = _help(None, "Sources to mix: each a data config (source, path, ...) plus `weight`, the "
                                        "fraction of its rows to use (1: all, 0.5: half, 2: each row twice).", factory=list)
    seed: int = _help(42, "Seed of the row sampling.")
    max_rows: int | None = _help(None, "Keep at most this many rows of the mixture.")

    def __post_init__(self) -> None:
        if not self.components:
            raise ConfigError("data.components is empty: list the sources to mix, each with a weight")
        for index, component in enumerate(self.components):
            weight = component.get("weight", 1.0) if isinstance(component, dict) else None
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise ConfigError(f"data.components[{index}].weight must be a number > 0, got {weight!r}")
            if component.get("source") == "mixture":
                raise ConfigError(f"data.components[{index}] is itself a mixture: flatten it")
        self.check_sample()


def load_mixture(spec: MixtureSpec, stats: LoadStats,
                 load: Callable[[dict], tuple[list, LoadStats]] | None = None) -> list:  # fmt: skip
    """The components' rows (each loaded by `load`, default `load_preferences`), each source's share drawn by its
    weight, shuffled."""
    load = load or load_preferences
    rng = random.Random(spec.seed)
    mixed: list = []
    for component in spec.components:
        component = dict(component)
        weight = float(component.pop("weight", 1.0))
        records, part = load(component)
        whole, fraction = divmod(weight, 1.0)
        chosen = records * int(whole) + rng.sample(records, round(fraction * len(records)))
        part.notes["mixture_weight"] = weight
        part.notes["mixture_rows"] = len(chosen)
        stats.parts.append(part)
        stats.rows_read += part.rows_read
        mixed.extend(chosen)
    rng.shuffle(mixed)
    return mixed


# source name -> (settings class, loader)
PREFERENCE_SOURCES: dict[str, tuple[type, Callable[[Any, LoadStats], list[PreferenceRecord]]]] = {
    "constructed": (ConstructedSpec, load_constructed),
    "safer_instruct_release": (ReleaseSpec, load_release),
    "hh_rlhf": (HHRLHFSpec, load_hh_rlhf),
    "pku_saferlhf": (PKUSafeRLHFSpec, load_pku_saferlhf),
    "mixture": (MixtureSpec, load_mixture),
}
INSTRUCTION_SOURCES = {"instructions": (InstructionSpec, load_instructions)}


def spec_from(node: Any) -> Any:
    """The settings object of a data config node, with unknown keys named."""
    values = plain(node)
    source = values.get("source")
    registry = {**PREFERENCE_SOURCES, **INSTRUCTION_SOURCES}
    if source not in registry:
        raise ConfigError(f"data.source '{source}' unknown: choose from {', '.join(registry)}")
    return registry[source][0](**node_values(values, registry[source][0], "data"))


def load_preferences(node: Any, guard: LeakageGuard | None = None,
                     pairs_only: bool = False) -> tuple[list[PreferenceRecord], LoadStats]:  # fmt: skip
    """Preference records of any preference source: guarded, de-duplicated, drawn and capped as configured.

    `guard`: evaluation prompts no row may match (removed as `test_prompt_overlap`). `pairs_only`:
    keep only rows with a rejected response (DPO), before the draw of `data.sample_size`.
    """
    spec = spec_from(node)
    if spec.source not in PREFERENCE_SOURCES:
        raise ConfigError(f"data.source '{spec.source}' gives instructions, not preference pairs: use a preference "
                          f"source ({', '.join(PREFERENCE_SOURCES)})")  # fmt: skip
    stats = LoadStats(source=spec.source)
    records = PREFERENCE_SOURCES[spec.source][1](spec, stats)
    if guard is not None:
        records = guard.filter(records, preference_texts, stats)
    records = _dedupe(records, getattr(spec, "dedupe", "none"), stats, key=_preference_key)
    loaded = records
    if pairs_only:
        records = [r for r in records if r.is_pair]
        without = len(loaded) - len(records)
        if without:
            stats.dropped["no_rejected"] += without
        stats.notes["sft_only_rows_skipped_by_dpo"] = without
        if loaded and not records:
            raise DataError(f"none of the {len(loaded)} rows has a rejected response, so DPO has nothing to train on "
                            "(rows without `rejected` are usable for SFT only)", path=_where(spec, stats))  # fmt: skip
    records = _draw(records, spec, stats)
    records, stats = _finish(records, spec, stats)
    stats.categories = _category_counts(loaded, records)
    return records, stats


def load_sft_examples(node: Any, guard: LeakageGuard | None = None) -> tuple[list[InstructionRecord], LoadStats]:
    """(instruction, response) examples for SFT: instruction datasets as they are, preference data's chosen,
    and a mixture of both kinds (benign instructions beside safety pairs, as in an Alpaca-style SFT)."""
    spec = spec_from(node)
    if spec.source == "mixture" or spec.source in INSTRUCTION_SOURCES:
        stats = LoadStats(source=spec.source)
        if spec.source == "mixture":  # each component (instruction or preference source) loaded as SFT examples
            records = load_mixture(spec, stats, load_sft_examples)
        else:
            records = INSTRUCTION_SOURCES[spec.source][1](spec, stats)
        if guard is not None:
            records = guard.filter(records, instruction_texts, stats)
        records = _dedupe(records, getattr(spec, "dedupe", "none"), stats, key=_instruction_key)
        records = _draw(records, spec, stats)
        return _finish(records, spec, stats)
    preferences, stats = load_preferences(node, guard)
    examples = [InstructionRecord(r.prompt, r.chosen, "", r.source, r.source_id) for r in preferences]
    return examples, stats


def preference_texts(record: PreferenceRecord) -> list[str]:
    """The texts of a row the leakage guard checks: its prompt, and any other form of it the source gave
    (`provenance["leakage_texts"]`, e.g. the human turns of an HH-RLHF dialogue)."""
    return [record.prompt, *record.provenance.get("leakage_texts", [])]


def instruction_texts(record: InstructionRecord) -> list[str]:
    return [record.instruction, f"{record.instruction}\n{record.input}" if record.input else ""]


def sample_rows(rows: list, size: int, seed: int, stratify_by: str = "category") -> tuple[list, bool]:
    """`size` rows drawn at random with `seed`, in their original order; (rows, whether stratified).

    Stratified (when `stratify_by == "category"` and the rows have more than one category): each
    category gets its share of `size` in proportion to its rows (largest remainders round up, ties
    by category name), drawn within the category. The same rows and seed give the same draw.
    """
    if size > len(rows):
        raise DataError(f"data.sample_size={size} but only {len(rows)} rows are left after filtering: lower the sample "
                        "size (paper rows: paper.pairs) or set data.sample_size=null for an unmatched run")  # fmt: skip
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        key = str(getattr(row, "category", "") or "") if stratify_by == "category" else ""
        groups.setdefault(key, []).append(index)
    if len(groups) < 2:
        return [rows[i] for i in sorted(rng.sample(range(len(rows)), size))], False
    quotas = {key: size * len(members) / len(rows) for key, members in groups.items()}
    shares = {key: int(quota) for key, quota in quotas.items()}
    by_remainder = sorted(groups, key=lambda key: (-(quotas[key] - shares[key]), key))
    for key in by_remainder[: size - sum(shares.values())]:
        shares[key] += 1
    chosen = [i for key in sorted(groups) for i in rng.sample(groups[key], shares[key])]
    return [rows[i] for i in sorted(chosen)], True


def _draw(records: list, spec: Any, stats: LoadStats) -> list:
    size = getattr(spec, "sample_size", None)
    if size is None:
        stats.sample = {"size": None, "seed": None, "stratified_by": None, "matched": False, "available": len(records)}
        return records
    drawn, stratified = sample_rows(records, int(size), int(spec.sample_seed), spec.stratify_by)
    if len(records) > len(drawn):
        stats.dropped["not_sampled"] += len(records) - len(drawn)
    stats.sample = {"size": int(size), "seed": int(spec.sample_seed), "stratified_by": "category" if stratified else None,
                    "matched": True, "available": len(records)}  # fmt: skip
    return drawn


def _category_counts(loaded: list[PreferenceRecord], used: list[PreferenceRecord]) -> dict[str, dict[str, int]]:
    """Per category: rows loaded (after the guard and de-duplication), pairs among them, rows used."""
    counts: dict[str, dict[str, int]] = {}
    for record in loaded:
        entry = counts.setdefault(record.category or "", {"loaded": 0, "pairs": 0, "used": 0})
        entry["loaded"] += 1
        entry["pairs"] += int(record.is_pair)
    for record in used:
        counts.setdefault(record.category or "", {"loaded": 0, "pairs": 0, "used": 0})["used"] += 1
    return dict(sorted(counts.items()))


def _preference_key(record: PreferenceRecord, mode: str) -> Any:
    prompt = normalize_text(record.prompt)
    return prompt if mode == "prompt" else (prompt, record.chosen.strip(), (record.rejected or "").strip())


def _instruction_key(record: InstructionRecord, mode: str) -> Any:
    prompt = normalize_text(record.instruction + "\n" + record.input)
    return prompt if mode == "prompt" else (prompt, record.output.strip())


def _dedupe(records: list, mode: str, stats: LoadStats, key: Callable[[Any, str], Any]) -> list:
    if mode == "none":
        return records
    first: dict[Any, Any] = {}  # key -> its first record, in the records' order
    for record in records:
        first.setdefault(key(record, mode), record)
    if len(first) < len(records):
        stats.dropped["duplicate"] += len(records) - len(first)
    return list(first.values())


def _where(spec: Any, stats: LoadStats) -> str:
    return ", ".join(stats.files) or getattr(spec, "path", "")


def _finish(records: list, spec: Any, stats: LoadStats) -> tuple[list, LoadStats]:
    if spec.max_rows is not None and len(records) > spec.max_rows:
        stats.notes["cut_by_max_rows"] = len(records) - spec.max_rows
        stats.dropped["cut_by_max_rows"] += len(records) - spec.max_rows
        records = records[: spec.max_rows]
        if stats.sample.get("size") is not None:
            stats.sample["matched"] = False
    stats.kept = len(records)
    if not records:
        raise DataError(f"no usable rows ({stats.rows_read} read, dropped: {dict(stats.dropped) or 'none'})",
                        path=_where(spec, stats))  # fmt: skip
    stats.log_summary()
    return records, stats
