"""The contract of the LLM access layer: requests in, completions (or failures) out.

Every stage that asks a language model something builds `ChatRequest`s and receives, for each one,
either a `Completion` or a `Failure`, never an exception and never silence. The identity of a
request (`id`) is the caller's: a stage uses it to match answers to items and to resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    """One request to an LLM role.

    Args:
        id: the caller's identity for this item (unique within a stage), e.g. "induce/42/s1".
        messages: chat messages `({"role": ..., "content": ...}, ...)`; the server applies the
            model's chat template. Leave empty when `prompt` is given.
        prompt: raw text for a plain completion (no chat template), e.g. the reversed model's
            prompt or an Alpaca-format policy. Exactly one of `messages` and `prompt` is set.
        prefill: text the assistant's answer starts with (e.g. `{"verdict": "` so that a small model
            answers in the verdict format). The model continues from it, and `Completion.text` is
            the whole answer, prefill included. Part of the cache key. How a backend sends it: a
            managed or local-weights role renders the chat template with the model's tokenizer and
            continues the text after the prefill (a raw completion); Anthropic gets it as the trailing
            assistant message; a remote OpenAI-compatible model without local weights cannot be
            prefilled, so the session sends the request without it and warns (role key `prefill`).
        sample_index: which of several samples for the same input this is; part of the cache key,
            so k samples of one prompt are k distinct cached answers.
        temperature / max_tokens / stop: per-request overrides of the role's settings.
        metadata: carried through to the result untouched; not part of the cache key.
    """

    id: str
    messages: tuple[dict[str, str], ...] = ()
    prompt: str | None = None
    prefill: str | None = None
    sample_index: int = 0
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if bool(self.messages) == (self.prompt is not None):
            raise ValueError(f"request {self.id!r}: set exactly one of `messages` and `prompt`")
        if self.prefill is not None and (not isinstance(self.prefill, str) or not self.prefill):
            raise ValueError(f"request {self.id!r}: prefill must be non-empty text or None")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """A successful answer to one request."""

    request_id: str
    text: str
    model: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    cached: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    ok = True

    @property
    def cut_off(self) -> bool:
        """The answer stopped at the token limit, not at an end token or a stop string. Anthropic's own
        word, `max_tokens`, is normalised to `length` by its backend; answers cached before that kept it."""
        return self.finish_reason in ("length", "max_tokens")


@dataclass(frozen=True)
class Failure:
    """A request that got no usable answer after retries, with the reason (written to failures)."""

    request_id: str
    reason: str
    model: str = ""
    attempts: int = 0
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    ok = False


Result = Completion | Failure
