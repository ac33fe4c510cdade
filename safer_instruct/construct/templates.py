"""Versioned prompt templates (`conf/prompts/*.yaml`): what every stage sends to a model.

A template config has `version` (recorded in every output row's provenance and in the dataset card),
`template` (Python `str.format` fields in braces, e.g. `{instruction}`; write a literal brace as `{{`)
and optionally `system` (a system message). The fields each stage fills are fixed, so a template that
names an unknown field, or leaves out one the stage needs, fails when the run starts, not at row 1000.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safer_instruct.errors import ConfigError


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned prompt template."""

    name: str
    version: str
    template: str
    system: str | None = None

    @property
    def fields(self) -> set[str]:
        return {field for _, field, _, _ in string.Formatter().parse(self.template) if field}

    @property
    def tag(self) -> str:
        """`name@version`, as recorded in provenance."""
        return f"{self.name}@{self.version}"

    def render(self, **values: Any) -> str:
        return self.template.format(**{field: values[field] for field in self.fields})

    def messages(self, **values: Any) -> tuple[dict[str, str], ...]:
        """Chat messages: the system message (if any), then the rendered template as the user turn."""
        system = ({"role": "system", "content": self.system},) if self.system else ()
        return (*system, {"role": "user", "content": self.render(**values)})

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any] | None, *, required: set[str],
                    allowed: set[str] | None = None) -> PromptTemplate:  # fmt: skip
        """Read `prompts.<name>`; `required` fields must appear, nothing outside `allowed` may."""
        if not cfg:
            raise ConfigError(f"prompts.{name} is missing: add a template with `version` and `template`")
        version, template = cfg.get("version"), cfg.get("template")
        if version in (None, "", "???"):
            raise ConfigError(f"prompts.{name}.version must be set (it is recorded in the data's provenance)")
        if not isinstance(template, str) or not template.strip():
            raise ConfigError(f"prompts.{name}.template must be non-empty text")
        prompt = cls(name=name, version=str(version), template=template, system=cfg.get("system") or None)
        try:
            fields = prompt.fields
        except ValueError as err:
            raise ConfigError(f"prompts.{name}.template is not a valid format string ({err}); "
                              "write literal braces as {{ and }}") from None  # fmt: skip
        allowed = set(allowed or required)
        if fields - allowed:
            raise ConfigError(f"prompts.{name}.template uses unknown field(s) {sorted(fields - allowed)}; "
                              f"available: {sorted(allowed)}")  # fmt: skip
        if required - fields:
            raise ConfigError(f"prompts.{name}.template must contain {sorted('{' + f + '}' for f in required - fields)}")
        return prompt
