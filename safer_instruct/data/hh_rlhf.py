"""Anthropic HH-RLHF in its release format as a preference source.

Each row has `chosen` and `rejected` transcripts of `\\n\\nHuman: ...` / `\\n\\nAssistant: ...` turns
(files `<subset>/train.jsonl.gz` and `test.jsonl.gz`, subsets harmless-base, helpful-base, ...; Hub id
`Anthropic/hh-rlhf` with `data_dir`). Both transcripts share the dialogue before the final
assistant turn: that is the prompt, the two final answers are chosen and rejected. A row whose
transcripts do not parse or whose dialogues differ before the final answer is malformed.

A local file (`data.path=FILE.jsonl`) is read as it is; `data_dir` (harmless-base in the preset)
only picks the sub-folder of a folder or of the Hub dataset. For the leakage guard, a multi-turn row
also offers its first and last human turns and its dialogue without the leading role label
(`provenance["leakage_texts"]`): evaluation prompts taken from HH-RLHF (the release's `hh` test
prompts) are single human turns, whatever `multi_turn` renders as the training prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from safer_instruct.data.loading import LoadStats, SourceSpec, _help, parsed_rows, text_field
from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.errors import ConfigError, DataError

MULTI_TURN = ("flatten", "last_turn", "drop")
_TURN = re.compile(r"\n\n(Human|Assistant): ?")


@dataclass
class HHRLHFSpec(SourceSpec):
    """Anthropic HH-RLHF transcripts (`data=hh_rlhf`)."""

    multi_turn: str = _help("flatten", "Dialogues with earlier turns: flatten (the prompt is the transcript so far, "
                                       "`Human: ...` / `Assistant: ...`), last_turn (only the last human message), drop.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.multi_turn not in MULTI_TURN:
            raise ConfigError(f"data.multi_turn must be one of {', '.join(MULTI_TURN)}, got '{self.multi_turn}'")


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """[(role, text)] of a `\\n\\nHuman: ... \\n\\nAssistant: ...` transcript; ValueError if it is not one."""
    if not text.startswith("\n\nHuman:"):
        text = "\n\n" + text.lstrip("\n") if text.lstrip("\n").startswith("Human:") else text
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 5:
        raise ValueError("not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript")
    turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if turns[-1][0] != "Assistant":
        raise ValueError("does not end with an Assistant turn")
    return turns


def render_dialogue(turns: list[tuple[str, str]], multi_turn: str) -> str | None:
    humans = [text for role, text in turns if role == "Human"]
    if len(turns) == 1:
        return turns[0][1]
    if multi_turn == "drop":
        return None
    if multi_turn == "last_turn":
        return humans[-1]
    return "\n\n".join(f"{role}: {text}" for role, text in turns)


def parse_hh_row(data: dict[str, Any], *, path: str, row: int) -> tuple[list[tuple[str, str]], str, str]:
    """(shared dialogue, chosen answer, rejected answer) of one row, or a DataError naming file, row and field."""
    chosen_text = text_field(data, "chosen", path=path, row=row)
    rejected_text = text_field(data, "rejected", path=path, row=row)
    try:
        chosen_turns, rejected_turns = parse_transcript(chosen_text), parse_transcript(rejected_text)
    except ValueError as err:
        raise DataError(str(err), path=path, row=row, field="chosen") from None
    if chosen_turns[:-1] != rejected_turns[:-1]:
        raise DataError("chosen and rejected differ before the final Assistant turn", path=path, row=row,
                        field="chosen")  # fmt: skip
    turns, chosen, rejected = chosen_turns[:-1], chosen_turns[-1][1], rejected_turns[-1][1]
    if not turns or turns[-1][0] != "Human" or not chosen:
        raise DataError("no Human turn before the final answer, or an empty answer", path=path, row=row,
                        field="chosen")  # fmt: skip
    return turns, chosen, rejected


def load_hh_rlhf(spec: HHRLHFSpec, stats: LoadStats) -> list[PreferenceRecord]:
    records = []
    for label, row, (turns, chosen, rejected) in parsed_rows(spec, stats, parse_hh_row):
        prompt = render_dialogue(turns, spec.multi_turn)
        if prompt is None:
            stats.skip("multi_turn")
            continue
        provenance: dict[str, Any] = {"turns": len(turns) + 1}
        if len(turns) > 1:
            stats.notes["multi_turn"] += 1
            humans = [text for role, text in turns if role == "Human"]
            whole = render_dialogue(turns, "flatten").removeprefix("Human: ")
            provenance["leakage_texts"] = list(dict.fromkeys([humans[0], humans[-1], whole]))
        if not rejected:
            stats.notes["empty_rejected"] += 1
        records.append(
            PreferenceRecord(
                prompt=prompt,
                chosen=chosen,
                rejected=rejected or None,
                category=spec.data_dir or "",
                source="hh_rlhf",
                source_id=f"{label}:{row.number}",
                provenance=provenance,
            )
        )
    return records
