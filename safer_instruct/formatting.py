"""The one place where an instruction becomes model text: used by SFT, DPO, generation and evaluation.

Two styles, chosen by the model preset (`model.prompt_format`):

* `alpaca`: the Stanford Alpaca prompt, for Alpaca-style models that have no chat template;
* `chat`: the tokenizer's own chat template.

Training data is always handed to TRL as plain strings built here (TRL's "standard" format), so the
text a model is trained on is byte for byte the text it is prompted with at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

PromptStyle = Literal["alpaca", "chat"]

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


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
            template = ALPACA_PROMPT_WITH_INPUT if input else ALPACA_PROMPT
            return template.format(instruction=instruction, input=input)
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

REVERSE_TEMPLATE_FILE = "prompts/reverse.yaml"


@dataclass(frozen=True)
class ReverseTemplate:
    """The versioned prompt of the reversed model (`conf/prompts/reverse.yaml`).

    The reversed model always sees this raw text (never a chat template), both when it is trained
    (`train reverse`) and when it induces instructions (`construct`, step `induce`); it then writes
    the instruction and ends it with the tokenizer's end-of-text token.
    """

    version: str
    template: str

    def render(self, response: str) -> str:
        # str.replace, not str.format: responses are arbitrary text with braces of their own.
        return self.template.replace("{response}", response.strip())


def reverse_template(path: str | None = None) -> ReverseTemplate:
    """Load the reversed-instruction template (default: the project's `conf/prompts/reverse.yaml`)."""
    from omegaconf import OmegaConf

    from safer_instruct.paths import conf_dir

    source = path or str(conf_dir() / REVERSE_TEMPLATE_FILE)
    node = OmegaConf.load(source)
    template, version = node.get("template"), node.get("version")
    if not isinstance(template, str) or "{response}" not in template or not version:
        raise ValueError(f"{source}: a reverse template needs `version` and a `template` containing {{response}}")
    return ReverseTemplate(version=str(version), template=template)


def render_reverse_prompt(response: str, template: ReverseTemplate | None = None) -> str:
    """The text the reversed model continues with the instruction that `response` answers."""
    return (template or reverse_template()).render(response)
