"""`anthropic`: Claude through the `anthropic` SDK's Messages API, e.g. the paper's Claude 3 judge."""

from __future__ import annotations

from typing import Any

from safer_instruct.errors import ConfigError
from safer_instruct.llm.backends import Answer, RequestOptions, SDKClientBackend, check_text
from safer_instruct.llm.faults import MalformedResponse
from safer_instruct.llm.types import ChatRequest, Usage


class AnthropicBackend(SDKClientBackend):
    """A raw `prompt` is sent as one user message (the Messages API has no plain completion); system
    messages go to the `system` field; a prefill is the trailing assistant message, which Claude
    continues (the API's own prefill)."""

    name = "anthropic"
    Options = RequestOptions

    @classmethod
    def check(cls, role) -> None:
        prefill = role.verdict_prefill
        if prefill and prefill != prefill.rstrip():
            raise ConfigError(f"{role.name}.verdict_prefill must not end in whitespace: Anthropic's API rejects such a prefill")

    @classmethod
    def prefill_support(cls, role) -> str:  # noqa: ARG003
        return "native"

    @classmethod
    def transient_errors(cls):
        import anthropic

        return {"timeout": (anthropic.APITimeoutError,), "connection error": (anthropic.APIConnectionError,)}

    def new_client(self, api_key: str):
        import anthropic

        return anthropic.AsyncAnthropic(api_key=api_key, base_url=self.role.base_url or None, max_retries=0,
                                        timeout=self.role.timeout_s)  # fmt: skip

    async def complete(self, request: ChatRequest, params: dict[str, Any]) -> Answer:
        client = self.client()
        if request.prompt is not None:
            system, messages = None, [{"role": "user", "content": request.prompt}]
        else:
            system = "\n\n".join(m["content"] for m in request.messages if m.get("role") == "system") or None
            messages = [dict(m) for m in request.messages if m.get("role") != "system"]
        if request.prefill is not None:
            # The API rejects a final assistant turn that ends in whitespace (it would end the turn).
            messages.append({"role": "assistant", "content": request.prefill})
        kwargs: dict[str, Any] = {"model": self.role.model, "messages": messages, "max_tokens": params["max_tokens"]}
        if system:
            kwargs["system"] = system
        if params.get("stop"):
            kwargs["stop_sequences"] = list(params["stop"])
        # anthropic 2.x dropped temperature/top_p from the signature; the API still takes them (Claude 3).
        extra = {"temperature": params["temperature"]}
        if params.get("top_p") is not None:
            extra["top_p"] = params["top_p"]
        kwargs["extra_body"] = {**extra, **self.options.extra_body}
        response = await client.messages.create(**kwargs)
        blocks = getattr(response, "content", None)
        if blocks is None:
            raise MalformedResponse("no content in the response")
        text = "".join(getattr(block, "text", "") or "" for block in blocks if getattr(block, "type", "") == "text")
        usage = getattr(response, "usage", None)
        # Anthropic's `max_tokens` (cut off at the token limit) is `length` in the OpenAI vocabulary
        # every stage checks; other stop reasons pass unchanged.
        finish_reason = getattr(response, "stop_reason", None)
        finish_reason = "length" if finish_reason == "max_tokens" else finish_reason
        return Answer(
            text=check_text(text),
            finish_reason=finish_reason,
            usage=Usage(int(usage.input_tokens or 0), int(usage.output_tokens or 0)) if usage else None,
            model=getattr(response, "model", None) or self.role.model,
        )
