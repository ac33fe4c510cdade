"""Instruction datasets (for SFT and reversed instruction tuning) in Alpaca, ShareGPT or messages format.

* Alpaca: `instruction`, optional `input`, `output` (Stanford Alpaca, Dolly-style exports);
* ShareGPT: `conversations: [{"from": "human"|"gpt", "value": ...}, ...]`;
* messages: `messages: [{"role": "user"|"assistant", "content": ...}, ...]` (OpenAI/TRL style).

Conversations become one (instruction, response) pair per user turn followed by an assistant turn
(`turns: all`) or only the first such exchange (`turns: first`); system turns are skipped. The project
ships a small hand-written Alpaca-format set for the offline demo (`DEMO_INSTRUCTIONS`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from safer_instruct.data.loading import LoadStats, SourceSpec, _help, parsed_rows, text_field
from safer_instruct.errors import ConfigError, DataError

FORMATS = ("auto", "alpaca", "sharegpt", "messages")
TURNS = ("all", "first")
DEMO_INSTRUCTIONS = Path(__file__).resolve().parent.parent / "resources" / "demo_instructions.jsonl"
_USER = {"human", "user"}
_ASSISTANT = {"gpt", "assistant", "chatgpt", "bard", "model", "bing"}


@dataclass
class InstructionRecord:
    """One instruction-following example: the request, its optional input, the response."""

    instruction: str
    output: str
    input: str = ""
    source: str = ""
    source_id: str = ""


@dataclass
class InstructionSpec(SourceSpec):
    """An instruction dataset (`data=demo_instructions`, `data=alpaca`, `data=sharegpt`)."""

    format: str = _help("auto", "Row format: auto (decided per row by its fields), alpaca, sharegpt or messages.")
    turns: str = _help("all", "Conversations: all (one pair per user->assistant exchange) or first.")

    def __post_init__(self) -> None:
        if self.path == "demo":
            self.path = str(DEMO_INSTRUCTIONS)
        super().__post_init__()
        if self.format not in FORMATS:
            raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got '{self.format}'")
        if self.turns not in TURNS:
            raise ConfigError(f"data.turns must be all or first, got '{self.turns}'")


def detect_format(data: dict[str, Any]) -> str | None:
    if "conversations" in data:
        return "sharegpt"
    if "messages" in data:
        return "messages"
    if "instruction" in data or "output" in data:
        return "alpaca"
    return None


def _conversation_pairs(turns: Any, fmt: str, *, path: str, row: int) -> list[tuple[str, str]]:
    field_name = "conversations" if fmt == "sharegpt" else "messages"
    role_key, text_key = ("from", "value") if fmt == "sharegpt" else ("role", "content")
    if not isinstance(turns, list) or not turns:
        raise DataError("must be a non-empty list of turns", path=path, row=row, field=field_name)
    normalized = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get(text_key), str) or not isinstance(turn.get(role_key), str):
            raise DataError(f"turn {index} needs text fields '{role_key}' and '{text_key}'", path=path, row=row,
                            field=field_name)  # fmt: skip
        normalized.append((turn[role_key].lower(), turn[text_key]))
    pairs = [(text, next_text) for (role, text), (next_role, next_text) in itertools.pairwise(normalized)
             if role in _USER and next_role in _ASSISTANT and text.strip() and next_text.strip()]  # fmt: skip
    if not pairs:
        raise DataError("no user turn followed by a non-empty assistant turn", path=path, row=row, field=field_name)
    return pairs


def parse_instruction_row(data: dict[str, Any], fmt: str, turns: str, *, path: str, row: int) -> list[InstructionRecord]:
    """The (instruction, response) pairs of one row."""
    fmt = detect_format(data) if fmt == "auto" else fmt
    if fmt is None:
        raise DataError("expected Alpaca fields (instruction, output), ShareGPT 'conversations' or 'messages'",
                        path=path, row=row)  # fmt: skip
    source_id = f"{path}:{row}"
    if fmt == "alpaca":
        instruction = text_field(data, "instruction", path=path, row=row)
        output = text_field(data, "output", path=path, row=row)
        extra = data.get("input") or ""
        if not isinstance(extra, str):
            raise DataError(f"must be text, got {type(extra).__name__}", path=path, row=row, field="input")
        return [InstructionRecord(instruction, output, extra, "instructions", source_id)]
    pairs = _conversation_pairs(data.get("conversations" if fmt == "sharegpt" else "messages"), fmt, path=path, row=row)
    if turns == "first":
        pairs = pairs[:1]
    return [
        InstructionRecord(instruction, output, "", "instructions", f"{source_id}#{i}" if i else source_id)
        for i, (instruction, output) in enumerate(pairs)
    ]


def load_instructions(spec: InstructionSpec, stats: LoadStats) -> list[InstructionRecord]:
    records: list[InstructionRecord] = []
    parse = partial(parse_instruction_row, fmt=spec.format, turns=spec.turns)
    for _, _, parsed in parsed_rows(spec, stats, parse):
        if len(parsed) > 1:
            stats.notes["extra_pairs_from_conversations"] += len(parsed) - 1
        records.extend(parsed)
    return records
