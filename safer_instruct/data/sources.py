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

    records, stats = load_preferences(cfg.data)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safer_instruct.data.hh_rlhf import HHRLHFSpec, load_hh_rlhf
from safer_instruct.data.instructions import InstructionRecord, InstructionSpec, load_instructions
from safer_instruct.data.loading import LoadStats, SourceSpec, _help, normalize_text, parsed_rows
from safer_instruct.data.pku_saferlhf import PKUSafeRLHFSpec, load_pku_saferlhf
from safer_instruct.data.release import ReleaseSpec, load_release
from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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
class MixtureSpec:
    """Several preference sources mixed by weight (`data=mixture_*`)."""

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


def load_mixture(spec: MixtureSpec, stats: LoadStats) -> list[PreferenceRecord]:
    rng = random.Random(spec.seed)
    mixed: list[PreferenceRecord] = []
    for component in spec.components:
        component = dict(component)
        weight = float(component.pop("weight", 1.0))
        records, part = load_preferences(component)
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
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    source = values.get("source")
    registry = {**PREFERENCE_SOURCES, **INSTRUCTION_SOURCES}
    if source not in registry:
        raise ConfigError(f"data.source '{source}' unknown: choose from {', '.join(registry)}")
    cls = registry[source][0]
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"data source '{source}' has no key(s) {', '.join(unknown)}; its keys: {', '.join(sorted(names))}")
    return cls(**values)


def load_preferences(node: Any) -> tuple[list[PreferenceRecord], LoadStats]:
    """Preference records of any preference source, de-duplicated and capped as configured."""
    spec = spec_from(node)
    if spec.source not in PREFERENCE_SOURCES:
        raise ConfigError(f"data.source '{spec.source}' gives instructions, not preference pairs: use a preference "
                          f"source ({', '.join(PREFERENCE_SOURCES)})")  # fmt: skip
    stats = LoadStats(source=spec.source)
    records = PREFERENCE_SOURCES[spec.source][1](spec, stats)
    records = _dedupe(records, getattr(spec, "dedupe", "none"), stats, key=_preference_key)
    return _finish(records, spec, stats)


def load_sft_examples(node: Any) -> tuple[list[InstructionRecord], LoadStats]:
    """(instruction, response) examples for SFT: instruction datasets as they are, preference data's chosen."""
    spec = spec_from(node)
    if spec.source in INSTRUCTION_SOURCES:
        stats = LoadStats(source=spec.source)
        records = INSTRUCTION_SOURCES[spec.source][1](spec, stats)
        records = _dedupe(records, spec.dedupe, stats, key=_instruction_key)
        return _finish(records, spec, stats)
    preferences, stats = load_preferences(node)
    examples = [InstructionRecord(r.prompt, r.chosen, "", r.source, r.source_id) for r in preferences]
    return examples, stats


def _preference_key(record: PreferenceRecord, mode: str) -> Any:
    prompt = normalize_text(record.prompt)
    return prompt if mode == "prompt" else (prompt, record.chosen.strip(), (record.rejected or "").strip())


def _instruction_key(record: InstructionRecord, mode: str) -> Any:
    prompt = normalize_text(record.instruction + "\n" + record.input)
    return prompt if mode == "prompt" else (prompt, record.output.strip())


def _dedupe(records: list, mode: str, stats: LoadStats, key: Callable[[Any, str], Any]) -> list:
    if mode == "none":
        return records
    seen: set = set()
    kept = []
    for record in records:
        k = key(record, mode)
        if k in seen:
            stats.skip("duplicate")
            continue
        seen.add(k)
        kept.append(record)
    return kept


def _finish(records: list, spec: Any, stats: LoadStats) -> tuple[list, LoadStats]:
    if spec.max_rows is not None and len(records) > spec.max_rows:
        stats.notes["cut_by_max_rows"] = len(records) - spec.max_rows
        records = records[: spec.max_rows]
    stats.kept = len(records)
    if not records:
        where = ", ".join(stats.files) or getattr(spec, "path", "")
        raise DataError(f"no usable rows ({stats.rows_read} read, dropped: {dict(stats.dropped) or 'none'})", path=where)
    stats.log_summary()
    return records, stats
