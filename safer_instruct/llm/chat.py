"""Chat templates rendered on our side, for answers that continue from a prefill.

A prefilled request (`ChatRequest.prefill`) asks the model to go on with an assistant answer that has
already begun, e.g. `{"verdict": "`. The chat endpoint of an OpenAI-compatible server cannot express
that, so for a model whose weights are on this machine the request is rendered here, with the model's
own tokenizer and chat template (the text the server itself would build for the chat; for a system
plus user message it is exactly `formatting.PromptFormat(...).prompt(user)`), the prefill is appended,
and the whole text is sent as a plain completion. The in-process backend renders the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def has_local_weights(model: str) -> bool:
    """Whether a model reference names weights on this machine (a kit model or a folder)."""
    return model.startswith("kit:") or Path(model).expanduser().is_dir()


class ChatRenderer:
    """Renders chat messages with a model's chat template, the generation prompt and a prefill.

    Args:
        model: a model reference (`kit:...` or a folder); its tokenizer is loaded on first use.
        tokenizer: an already loaded tokenizer (the in-process backend's) instead of `model`.
    """

    def __init__(self, model: str | None = None, tokenizer: Any = None):
        if model is None and tokenizer is None:
            raise ValueError("ChatRenderer needs a model reference or a tokenizer")
        self.model = model
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._tokenizer is not None

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from safer_instruct.model_kit import load_tokenizer

                self._tokenizer = load_tokenizer(self.model)
            return self._tokenizer

    def render(self, messages: Sequence[dict[str, str]], prefill: str | None = None) -> str:
        """The template's text for `messages` up to the start of the assistant's answer, then `prefill`."""
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"the tokenizer of {self.model or 'this model'} has no chat template, so a chat "
                             "request cannot be prefilled; send a raw prompt instead")  # fmt: skip
        text = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
        return text + (prefill or "")

    def completion_prompt(self, messages: Sequence[dict[str, str]], prefill: str | None = None) -> str:
        """`render(...)` for an endpoint that tokenizes a raw prompt with special tokens (transformers
        serve, vLLM): a leading BOS that the tokenizer adds by itself is left out, so it is not doubled."""
        text = self.render(messages, prefill)
        tokenizer = self.tokenizer
        bos = getattr(tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            added = tokenizer("", add_special_tokens=True)["input_ids"]
            if added and added[0] == tokenizer.bos_token_id:
                text = text[len(bos) :]
        return text
