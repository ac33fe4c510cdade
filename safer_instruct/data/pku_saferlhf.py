"""PKU-SafeRLHF in its release format as a preference source.

Rows have `prompt`, `response_0`, `response_1`, `is_response_0_safe`, `is_response_1_safe`,
`better_response_id` and `safer_response_id` (Hub id `PKU-Alignment/PKU-SafeRLHF`, files
`data/*/train.jsonl`). Which id decides "chosen" is a config choice: `preference: safer` (harmlessness,
the default: this project is about safety) or `better` (helpfulness). `require_safe_chosen` keeps
only pairs whose chosen response is flagged safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from safer_instruct.data.loading import LoadStats, SourceSpec, _help, parsed_rows, text_field
from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.errors import ConfigError, DataError

PREFERENCES = {"safer": "safer_response_id", "better": "better_response_id"}


@dataclass
class PKUSafeRLHFSpec(SourceSpec):
    """PKU-SafeRLHF pairs (`data=pku_saferlhf`)."""

    preference: str = _help("safer", "Which label picks the chosen response: safer (safer_response_id) or better "
                                     "(better_response_id).")
    require_safe_chosen: bool = _help(False, "Keep only pairs whose chosen response is flagged safe.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preference not in PREFERENCES:
            raise ConfigError(f"data.preference must be safer or better, got '{self.preference}'")


def _response_id(value: Any, *, path: str, row: int, field: str) -> int:
    try:
        number = None if isinstance(value, bool) else int(str(value).strip())  # None, too: int("None") fails
    except ValueError:
        number = None
    if number not in (0, 1):
        raise DataError(f"must be 0 or 1, got {value!r}", path=path, row=row, field=field)
    return number


def _flag(value: Any, *, path: str, row: int, field: str) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise DataError(f"must be true or false, got {value!r}", path=path, row=row, field=field)


def parse_pku_row(
    data: dict[str, Any], *, id_field: str, path: str, row: int
) -> tuple[str, list[str], int, list[bool | None]]:
    """(prompt, [response_0, response_1], id of the chosen one, [is_response_0_safe, is_response_1_safe])."""
    prompt = text_field(data, "prompt", path=path, row=row)
    responses = [text_field(data, f"response_{i}", path=path, row=row) for i in (0, 1)]
    chosen_id = _response_id(data.get(id_field), path=path, row=row, field=id_field)
    safe = [_flag(data.get(f"is_response_{i}_safe"), path=path, row=row, field=f"is_response_{i}_safe") for i in (0, 1)]
    return prompt, responses, chosen_id, safe


def load_pku_saferlhf(spec: PKUSafeRLHFSpec, stats: LoadStats) -> list[PreferenceRecord]:
    parse = partial(parse_pku_row, id_field=PREFERENCES[spec.preference])
    records = []
    for label, row, (prompt, responses, chosen_id, safe) in parsed_rows(spec, stats, parse):
        if spec.require_safe_chosen and safe[chosen_id] is not True:
            stats.skip("chosen_not_safe")
            continue
        if safe[chosen_id] is True and safe[1 - chosen_id] is False:
            stats.notes["safe_vs_unsafe"] += 1
        records.append(
            PreferenceRecord(
                prompt=prompt,
                chosen=responses[chosen_id],
                rejected=responses[1 - chosen_id],
                category=str(row.data.get("category") or ""),
                source="pku_saferlhf",
                source_id=f"{label}:{row.number}",
                provenance={"preference": spec.preference, "chosen_safe": safe[chosen_id],
                            "rejected_safe": safe[1 - chosen_id]},  # fmt: skip
            )
        )
    return records
