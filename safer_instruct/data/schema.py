"""The preference schema: what every data source produces and every trainer consumes.

One record is an instruction (`prompt`), a preferred response (`chosen`), a dispreferred one
(`rejected`, None for rows usable for SFT only), the harm `category`, and where it came from
(`source`, `source_id`). Texts are raw: the prompt format of a model is applied at training time by
`safer_instruct.formatting`, never stored in the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from safer_instruct.data.loading import text_field
from safer_instruct.errors import DataError


@dataclass
class PreferenceRecord:
    """One preference example in the project's schema."""

    prompt: str
    chosen: str
    rejected: str | None
    category: str = ""
    source: str = ""
    source_id: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        """True when the record can train DPO (it has a rejected response)."""
        return bool(self.rejected)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        path: str | None = None,
        row: int | None = None,
        require_rejected: bool = False,
    ) -> PreferenceRecord:
        """Validate a mapping into a record; a bad field is a DataError naming file, row and field."""
        for name in ("prompt", "chosen", "rejected") if require_rejected else ("prompt", "chosen"):
            text_field(data, name, path=path, row=row)
        rejected = data.get("rejected")
        if rejected is not None and not isinstance(rejected, str):
            raise DataError(f"must be text, got {type(rejected).__name__}", path=path, row=row, field="rejected")
        return cls(
            prompt=data["prompt"],
            chosen=data["chosen"],
            rejected=rejected if rejected and rejected.strip() else None,
            category=str(data.get("category") or ""),
            source=str(data.get("source") or ""),
            source_id=str(data.get("source_id") or ""),
            provenance=dict(data.get("provenance") or {}),
        )
