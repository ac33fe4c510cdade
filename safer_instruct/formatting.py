"""The one place where an instruction becomes model text: used by SFT, DPO, generation and evaluation.

Two styles, chosen by the model preset (`model.prompt_format`):

* `alpaca`: the Stanford Alpaca prompt (`conf/prompts/alpaca*.yaml`), for Alpaca-style models that
  have no chat template;
* `chat`: the tokenizer's own chat template.

Training data is always handed to TRL as plain strings built here (TRL's "standard" format), so the
text a model is trained on is byte for byte the text it is prompted with at evaluation.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from safer_instruct.errors import ConfigError
from safer_instruct.prompts import PromptTemplate, prompt_preset

PromptStyle = Literal["alpaca", "chat"]


@functools.cache
def alpaca_template(with_input: bool = False) -> PromptTemplate:
    """The Stanford Alpaca prompt (`conf/prompts/alpaca.yaml`; `alpaca_input.yaml` for a row with an input)."""
    template = prompt_preset("alpaca_input" if with_input else "alpaca")
    return template.expect({"instruction", "input"} if with_input else {"instruction"})


@dataclass
class PromptFormat:
    """How prompts and responses are rendered for one model.

    Args:
        style: `alpaca` or `chat`.
        tokenizer: the model's tokenizer; needed for `chat` (its template) and for the end-of-text
            token that closes every completion.
        system_prompt: optional system message (chat style only).
    """

    style: PromptStyle
    tokenizer: Any = None
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.style not in ("alpaca", "chat"):
            raise ValueError(f"prompt_format must be 'alpaca' or 'chat', got {self.style!r}")
        if self.style == "chat" and getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                "prompt_format 'chat' needs a tokenizer with a chat template; this one has none. "
                "Use prompt_format=alpaca for Alpaca-style models."
            )
        if self.style == "alpaca" and self.system_prompt:
            raise ValueError("system_prompt is only supported with prompt_format 'chat'")

    @classmethod
    def for_model(cls, model_cfg: Any, tokenizer: Any) -> PromptFormat:
        """The format a model preset (`conf/model/*.yaml`) asks for."""
        return cls(
            style=model_cfg.prompt_format,
            tokenizer=tokenizer,
            system_prompt=model_cfg.get("system_prompt") or None,
        )

    def messages(self, instruction: str, input: str = "") -> list[dict[str, str]]:
        """The chat messages of one instruction (for servers that apply the template themselves)."""
        user = f"{instruction}\n\n{input}" if input else instruction
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": user}]

    def prompt(self, instruction: str, input: str = "") -> str:
        """The text the model sees before it answers."""
        if self.style == "alpaca":
            return alpaca_template(bool(input)).render(instruction=instruction, input=input)
        return self.tokenizer.apply_chat_template(
            self.messages(instruction, input), tokenize=False, add_generation_prompt=True
        )

    def completion(self, response: str, instruction: str = "", input: str = "") -> str:
        """The text the model is trained to produce after the prompt, end-of-turn marker included.

        For chat templates this is whatever the template renders after the generation prompt
        (e.g. `answer<|im_end|>\n`), so that training ends turns exactly as the template does.
        """
        if self.style == "alpaca":
            return response + (self.tokenizer.eos_token if self.tokenizer is not None else "")
        prompt = self.prompt(instruction, input)
        turn = [*self.messages(instruction, input), {"role": "assistant", "content": response}]
        full = self.tokenizer.apply_chat_template(turn, tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt) :]
        # Templates that rewrite earlier turns when an answer follows: fall back to answer + eos.
        return response + (self.tokenizer.eos_token or "")

    def stop_text(self) -> str | None:
        """Text that ends a generated answer (for servers that need an explicit stop string)."""
        return self.tokenizer.eos_token if self.tokenizer is not None else None


# --- Reversed instruction tuning: response -> instruction -------------------------------------------

# Written into a reversed model's folder by `train reverse`: the template it was trained with and the
# token budget its prompts were cut to, so that `construct` prompts it exactly as it was trained.
REVERSE_PROMPT_CARD = "reverse_prompt.json"
# A card written before templates had a name: `version: <name>-v<N>` (e.g. reverse-v1).
_LEGACY_VERSION = re.compile(r"^(?P<name>.+)-v(?P<number>[1-9][0-9]*)$")


def reverse_template(name: str | None = None) -> PromptTemplate:
    """The reversed model's prompt (`conf/prompts/reverse*.yaml`; field `{response}`).

    The reversed model always sees this raw text (never a chat template), both when it is trained
    (`train reverse`) and when it induces instructions (`construct`, step `induce`); it then writes
    the instruction and ends it with the tokenizer's end-of-text token.

    `name`: None for the project's own (`conf/prompts/reverse.yaml`); a preset name under
    `conf/prompts/` (e.g. `reverse_paper`, the paper's text); or the path of a template YAML file.
    """
    from safer_instruct.paths import conf_dir

    if name and ("/" in name or name.endswith((".yaml", ".yml")) or Path(name).is_file()):
        return _reverse_checked(PromptTemplate.from_file(name))
    name = name or "reverse"
    if not (conf_dir() / "prompts" / f"{name}.yaml").is_file():
        presets = sorted(p.stem for p in (conf_dir() / "prompts").glob("reverse*.yaml"))
        raise ConfigError(f"no reverse template preset '{name}' (conf/prompts/{name}.yaml); presets: "
                          f"{', '.join(presets)}; or give the path of a YAML file")  # fmt: skip
    return _reverse_checked(prompt_preset(name))


def _reverse_checked(template: PromptTemplate) -> PromptTemplate:
    if template.system:
        raise ConfigError(f"{template.source}: a reverse template is raw text: it has no `system` message")
    return template.expect({"response"})


def reverse_template_from(node: Any, source: str) -> PromptTemplate:
    """A reverse template from a model's card (`reverse_prompt.json`: the template's keys beside
    `truncation`). A card written before templates had a name (`version: reverse-v1`) reads as
    name `reverse`, version 1, which is what it was."""
    keys = {key: node[key] for key in ("name", "version", "template", "system") if key in node}
    legacy = _LEGACY_VERSION.match(str(keys.get("version"))) if "name" not in keys else None
    if legacy:
        keys.update(name=legacy["name"], version=int(legacy["number"]))
    return _reverse_checked(PromptTemplate.from_mapping(keys, source))


def render_reverse_prompt(response: str, template: PromptTemplate | None = None) -> str:
    """The text the reversed model continues with the instruction that `response` answers (uncut)."""
    return (template or reverse_template()).render(response=response.strip())


def reverse_prompt_card(template: PromptTemplate, max_prompt_tokens: int, max_length: int) -> dict[str, Any]:
    """What `train reverse` saves beside the model (`reverse_prompt.json`): the template, and the cut.

    `max_prompt_tokens`: the reversed prompt (template + response) was cut to this many tokens of the
    model's own tokenizer by cutting the end of the response (`Encoder.fit_reverse_prompt`);
    `max_length`: prompt + instruction + EOS tokens in training.
    """
    return {"name": template.name, "version": template.version, "tag": template.tag, "template": template.template,
            "truncation": {"max_prompt_tokens": int(max_prompt_tokens), "max_length": int(max_length),
                           "cut": "response_end", "tokenizer": "the model's own (saved in this folder)"}}  # fmt: skip


def read_reverse_prompt_card(model_dir: str | Path) -> dict[str, Any] | None:
    """The card a reversed model was saved with (None: the folder has none, e.g. not a reversed model)."""
    import json

    path = Path(model_dir) / REVERSE_PROMPT_CARD
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable as JSON ({err})") from None
    reverse_template_from(card, str(path))  # checks the template
    return card
