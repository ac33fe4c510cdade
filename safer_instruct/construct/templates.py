"""The inducer's prompt in the construct stage: the template the reversed model was trained with.

Like every prompt it is a `safer_instruct.prompts.PromptTemplate` (one YAML shape, tag `name@vN`); the
expert's templates are loaded by `construct.tasks.load_template`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError
from safer_instruct.formatting import (
    REVERSE_PROMPT_CARD,
    read_reverse_prompt_card,
    render_reverse_prompt,
    reverse_template,
    reverse_template_from,
)
from safer_instruct.prompts import PromptTemplate


@dataclass
class InductionPrompt:
    """What the inducer is prompted with: the reversed model's template, and the cut of each text.

    `source`: `model` (the template saved with the reversed model, `reverse_prompt.json`), `config`
    (`induce.reverse_prompt`, for an inducer without one) or `default` (`conf/prompts/reverse.yaml`).
    `encoder`: the reversed model's tokenizer and its training budget (`max_prompt_tokens`): each corpus
    text is cut exactly as training cut its responses (`Encoder.fit_reverse_prompt`); None when the
    model carries no budget, and texts are sent whole.
    """

    template: PromptTemplate  # field {response}
    source: str
    model_dir: str | None = None
    encoder: Any = None
    max_prompt_tokens: int | None = None

    def render(self, text: str) -> tuple[str, bool]:
        """The prompt for one corpus text, and whether the text was cut to fit."""
        if self.encoder is None:
            return render_reverse_prompt(text, self.template), False
        return self.encoder.fit_reverse_prompt(self.template, text, self.max_prompt_tokens)

    def describe(self) -> dict[str, Any]:
        """As recorded in stats.json and in the induce phase's settings."""
        cut = None
        if self.encoder is not None:
            cut = {"max_prompt_tokens": self.max_prompt_tokens, "tokenizer": self.model_dir, "cut": "response_end"}
        return {"name": self.template.name, "version": self.template.version, "tag": self.template.tag,
                "template": self.template.template, "source": self.source, "model": self.model_dir, "truncation": cut}  # fmt: skip


def induction_prompt(inducer_model: str, configured: str | None) -> InductionPrompt:
    """The induction prompt for `inducer.model`, checked against `induce.reverse_prompt` (`configured`).

    A reversed model trained here carries its template and prompt budget (`reverse_prompt.json`):
    they are used, and a configured template that differs is a ConfigError (the model only knows the
    prompt it was trained on). Without that file: the configured template, else the project's own.
    """
    try:
        wanted = reverse_template(configured) if configured else None
    except ConfigError as err:
        raise ConfigError(f"induce.reverse_prompt: {err}") from None
    folder = Path(str(inducer_model)).expanduser()
    card = read_reverse_prompt_card(folder) if ":" not in str(inducer_model) and folder.is_dir() else None
    if card is None:
        if folder.is_dir():
            logging.getLogger(__name__).warning(
                "inducer.model %s has no %s (not trained by `train reverse` here): prompting it with %s, "
                "corpus texts sent whole", folder, REVERSE_PROMPT_CARD, "induce.reverse_prompt" if wanted else "conf/prompts/reverse.yaml")  # fmt: skip
        return InductionPrompt(wanted or reverse_template(), "config" if wanted else "default")
    saved = reverse_template_from(card, str(folder / REVERSE_PROMPT_CARD))
    if wanted is not None and wanted != saved:
        raise ConfigError(
            f"induce.reverse_prompt={configured} ({wanted.tag}) is not the template the reversed model "
            f"{folder} was trained with ({saved.tag}, its {REVERSE_PROMPT_CARD}): the model only knows "
            "its training prompt. Set induce.reverse_prompt=null to use the saved one, or train the model "
            f"with `train reverse reverse_prompt={configured}`")  # fmt: skip
    budget = (card.get("truncation") or {}).get("max_prompt_tokens")
    if not budget:
        return InductionPrompt(saved, "model", str(folder))
    from safer_instruct.model_kit import load_tokenizer
    from safer_instruct.training.preprocess import Encoder

    truncation = card["truncation"]
    encoder = Encoder(load_tokenizer(str(folder)), int(truncation["max_length"]), int(budget))
    overhead = encoder.count_tokens(render_reverse_prompt("", saved))
    if overhead >= int(budget):
        raise ConfigError(f"{folder / REVERSE_PROMPT_CARD}: a prompt budget of {budget} tokens leaves no room for the "
                          f"text (the template alone takes {overhead}); retrain with a larger model.max_prompt_length")  # fmt: skip
    return InductionPrompt(saved, "model", str(folder), encoder, int(budget))
