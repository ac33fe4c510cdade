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


@dataclass
class InductionPrompt:
    """What the inducer is prompted with: the reversed model's template, and the cut of each text.

    `source`: `model` (the template saved with the reversed model, `reverse_prompt.json`), `config`
    (`induce.reverse_prompt`, for an inducer without one) or `default` (`conf/prompts/reverse.yaml`).
    `encoder`: the reversed model's tokenizer and its training budget (`max_prompt_tokens`): each corpus
    text is cut exactly as training cut its responses (`Encoder.fit_reverse_prompt`); None when the
    model carries no budget, and texts are sent whole.
    """

    template: Any  # formatting.ReverseTemplate
    source: str
    model_dir: str | None = None
    encoder: Any = None
    max_prompt_tokens: int | None = None

    def render(self, text: str) -> tuple[str, bool]:
        """The prompt for one corpus text, and whether the text was cut to fit."""
        if self.encoder is None:
            return self.template.render(text), False
        return self.encoder.fit_reverse_prompt(self.template, text, self.max_prompt_tokens)

    @property
    def tag(self) -> str:
        return f"reverse@{self.template.version}"

    def describe(self) -> dict[str, Any]:
        """As recorded in stats.json and in the induce stage's settings."""
        cut = None
        if self.encoder is not None:
            cut = {"max_prompt_tokens": self.max_prompt_tokens, "tokenizer": self.model_dir, "cut": "response_end"}
        return {"version": self.template.version, "template": self.template.template, "source": self.source,
                "model": self.model_dir, "truncation": cut}  # fmt: skip


def induction_prompt(inducer_model: str, configured: str | None) -> InductionPrompt:
    """The induction prompt for `inducer.model`, checked against `induce.reverse_prompt` (`configured`).

    A reversed model trained here carries its template and prompt budget (`reverse_prompt.json`):
    they are used, and a configured template that differs is a ConfigError (the model only knows the
    prompt it was trained on). Without that file: the configured template, else the project's own.
    """
    import logging
    from pathlib import Path

    from safer_instruct.formatting import (
        REVERSE_PROMPT_CARD,
        read_reverse_prompt_card,
        reverse_template,
        reverse_template_from,
    )

    try:
        wanted = reverse_template(configured) if configured else None
    except (OSError, ValueError) as err:
        raise ConfigError(f"induce.reverse_prompt: {err}") from None
    folder = Path(str(inducer_model)).expanduser()
    try:
        card = read_reverse_prompt_card(folder) if ":" not in str(inducer_model) and folder.is_dir() else None
    except ValueError as err:
        raise ConfigError(f"inducer.model: {err}") from None
    if card is None:
        if folder.is_dir():
            logging.getLogger(__name__).warning(
                "inducer.model %s has no %s (not trained by `train reverse` here): prompting it with %s, "
                "corpus texts sent whole", folder, REVERSE_PROMPT_CARD, "induce.reverse_prompt" if wanted else "conf/prompts/reverse.yaml")  # fmt: skip
        return InductionPrompt(wanted or reverse_template(), "config" if wanted else "default")
    saved = reverse_template_from(card, str(folder / REVERSE_PROMPT_CARD))
    if wanted is not None and not wanted.same_as(saved):
        raise ConfigError(
            f"induce.reverse_prompt={configured} ({wanted.version}) is not the template the reversed model "
            f"{folder} was trained with ({saved.version}, its {REVERSE_PROMPT_CARD}): the model only knows "
            "its training prompt. Set induce.reverse_prompt=null to use the saved one, or train the model "
            f"with `train reverse reverse_prompt={configured}`")  # fmt: skip
    budget = (card.get("truncation") or {}).get("max_prompt_tokens")
    if not budget:
        return InductionPrompt(saved, "model", str(folder))
    from safer_instruct.model_kit import load_tokenizer
    from safer_instruct.training.preprocess import Encoder

    truncation = card["truncation"]
    encoder = Encoder(load_tokenizer(str(folder)), int(truncation["max_length"]), int(budget))
    overhead = encoder.count_tokens(saved.render(""))
    if overhead >= int(budget):
        raise ConfigError(f"{folder / REVERSE_PROMPT_CARD}: a prompt budget of {budget} tokens leaves no room for the "
                          f"text (the template alone takes {overhead}); retrain with a larger model.max_prompt_length")  # fmt: skip
    return InductionPrompt(saved, "model", str(folder), encoder, int(budget))
