"""Answers of the model under test, through the `policy` LLM role, in the project's one prompt format.

* `prompt_format: chat` presets: chat messages from `PromptFormat.messages`; the server applies the
  model's chat template (the same template training used).
* `prompt_format: alpaca` presets: the raw Alpaca prompt from `PromptFormat.prompt`, sent as a plain
  completion (`prompt=`), stopped at the tokenizer's end-of-text.

The decoding settings (temperature, max tokens, top-p, stop, seed) are recorded with every answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

from omegaconf import OmegaConf

from safer_instruct.errors import ConfigError
from safer_instruct.formatting import PromptFormat
from safer_instruct.llm.types import ChatRequest

log = logging.getLogger(__name__)


def policy_format(model_cfg: Mapping[str, Any], remote: bool) -> PromptFormat:
    """The model preset's PromptFormat, with its tokenizer when it can be loaded here."""
    from safer_instruct.model_kit import load_tokenizer

    style = str(model_cfg.get("prompt_format") or "")
    try:
        tokenizer = load_tokenizer(str(model_cfg["path"]))
    except Exception as err:  # noqa: BLE001 - any failure to load means "not available here"
        if not (remote and style == "chat"):
            raise ConfigError(
                f"cannot load the tokenizer of model.path={model_cfg.get('path')} ({err}); the "
                f"{style or '?'} prompt format needs it"
            ) from None
        log.info(
            "tokenizer of %s not available here: the server applies its chat template", model_cfg["path"]
        )
        return server_side_format(model_cfg)
    return _format(model_cfg, tokenizer)


def server_side_format(model_cfg: Mapping[str, Any]) -> PromptFormat:
    """The preset's PromptFormat without its tokenizer: chat messages, templated by whoever serves the model."""
    # Stands in for a tokenizer we cannot load (a remote endpoint serving a chat model by name): chat
    # requests carry messages only and the server applies its own template.
    return _format(model_cfg, SimpleNamespace(chat_template="(applied by the server)", eos_token=None))


def _format(model_cfg: Mapping[str, Any], tokenizer: Any) -> PromptFormat:
    try:
        return PromptFormat.for_model(OmegaConf.create(dict(model_cfg)), tokenizer)
    except ValueError as err:
        raise ConfigError(f"model.prompt_format: {err}") from None


def answer_requests(items: Iterable[Any], fmt: PromptFormat, prefix: str = "answer") -> Iterator[ChatRequest]:
    """One generation request per item, rendered by the model's PromptFormat."""
    stop = fmt.stop_text()
    for item in items:
        if fmt.style == "chat":
            rendered = {"messages": tuple(fmt.messages(item.prompt))}
        else:
            rendered = {"prompt": fmt.prompt(item.prompt), "stop": (stop,) if stop else None}
        yield ChatRequest(id=f"{prefix}/{item.id}", metadata={"item": item.id}, **rendered)


def decoding_settings(
    policy_cfg: Mapping[str, Any], fmt: PromptFormat, model_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """What decides the answers, saved with them: model, prompt format and sampling parameters."""
    stop = fmt.stop_text() if fmt.style == "alpaca" else None
    return {
        "model": model_cfg.get("name"),
        "model_path": model_cfg.get("path"),
        "served_model": policy_cfg.get("model"),
        "base_url": policy_cfg.get("base_url") or None,
        "prompt_format": fmt.style,
        "request_kind": "chat messages (server applies the chat template)" if fmt.style == "chat"
        else "raw completion prompt (Alpaca)",
        "system_prompt": fmt.system_prompt,
        "temperature": policy_cfg.get("temperature"),
        "max_tokens": policy_cfg.get("max_tokens"),
        "top_p": policy_cfg.get("top_p"),
        "seed": policy_cfg.get("seed"),
        "stop": list(policy_cfg.get("stop") or ([stop] if stop else [])) or None,
    }  # fmt: skip
