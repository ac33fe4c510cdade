"""Backends: how one request becomes one answer. They raise on any problem; the session retries.

* `OpenAIBackend`: the `openai` SDK (async) against any OpenAI-compatible server: OpenAI, vLLM,
  `transformers serve`, llama.cpp, a managed loopback server.
* `AnthropicBackend`: the `anthropic` SDK (Messages API), e.g. the paper's Claude 3 judge.
* `InProcessBackend` (in `inprocess.py`): batched transformers generation, no server.

The SDKs' own retries are off (`max_retries=0`): retries, backoff and Retry-After are handled once,
in the session, for every backend alike. The API key is read from the env var the role names when the
client is first needed, never stored in config or logged.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

from safer_instruct.errors import ConfigError
from safer_instruct.llm.chat import ChatRenderer
from safer_instruct.llm.config import RoleConfig
from safer_instruct.llm.faults import EmptyCompletion, MalformedResponse
from safer_instruct.llm.types import ChatRequest, Usage


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str | None
    usage: Usage | None  # None when the server did not say
    model: str


class Backend(Protocol):
    def prepare(self) -> None:
        """Everything that can fail for the whole role (a missing key, loading a model), before any request."""

    async def complete(self, request: ChatRequest, params: dict[str, Any]) -> Answer: ...

    async def aclose(self) -> None: ...


def read_api_key(role: RoleConfig) -> str | None:
    """The key from the env var named by `api_key_env` (never from the config itself)."""
    if not role.api_key_env:
        return None
    key = os.environ.get(role.api_key_env)
    if not key:
        raise ConfigError(
            f"role '{role.name}': the environment variable {role.api_key_env} (named by "
            f"{role.name}.api_key_env) is not set: export it, or set {role.name}.api_key_env='' for a server "
            "that needs no key"
        )
    return key


def _check_text(text: Any) -> str:
    if text is None or not isinstance(text, str):
        raise EmptyCompletion("no text in the completion")
    if text == "":
        raise EmptyCompletion("the completion text is empty")
    return text


class SDKClientBackend:
    """What the SDK backends share: one async SDK client per role, made on first use with the role's
    API key (`prepare` makes it, so a missing key fails before any request) and closed by `aclose`.
    A subclass says how to make it (`new_client`)."""

    role: RoleConfig
    _client: Any = None

    def new_client(self, api_key: str) -> Any:
        raise NotImplementedError

    def prepare(self) -> None:
        self.client()

    def client(self):
        if self._client is None:
            # Local servers accept any key; the SDKs insist on a value.
            self._client = self.new_client(read_api_key(self.role) or "none")
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class OpenAIBackend(SDKClientBackend):
    """Chat requests go to /chat/completions (the server applies the chat template), raw prompts to
    /completions. A prefilled chat request is rendered here by `renderer` (the model's own chat
    template, see `chat.py`) and continued with /completions; the session sends one only when the
    role has local weights for a renderer, and drops the prefill otherwise."""

    def __init__(self, role: RoleConfig, base_url: str, served_model: str, report_model: str | None = None,
                 renderer: ChatRenderer | None = None):  # fmt: skip
        self.role = role
        self.base_url = base_url
        self.served_model = served_model
        # Name written into answers: the config's model for servers we run (the served name is a path).
        self.report_model = report_model
        self.renderer = renderer

    def new_client(self, api_key: str):
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url or None, api_key=api_key, max_retries=0,
                                  timeout=self.role.timeout_s)  # fmt: skip

    def completion_text(self, request: ChatRequest) -> str | None:
        """The text of a plain completion (None: a chat completion): the raw prompt, or the chat
        rendered with the model's template, then the prefill the answer continues from."""
        if request.prompt is not None:
            return request.prompt + (request.prefill or "")
        if request.prefill is None:
            return None
        if self.renderer is None:
            raise ConfigError(f"role '{self.role.name}': a prefilled chat request needs the model's chat template, "
                              f"and {self.role.model} has no local weights to read it from")  # fmt: skip
        return self.renderer.completion_prompt(request.messages, request.prefill)

    def body(self, request: ChatRequest, params: dict[str, Any], prompt: str | None = None) -> dict[str, Any]:
        """The JSON body of a chat (`prompt` None) or text completion request."""
        body: dict[str, Any] = {"model": self.served_model, "max_tokens": params["max_tokens"],
                                "temperature": params["temperature"]}  # fmt: skip
        if prompt is None and request.prompt is not None:
            prompt = request.prompt
        if prompt is not None:
            body["prompt"] = prompt
        else:
            body["messages"] = [dict(m) for m in request.messages]
        if params.get("top_p") is not None:
            body["top_p"] = params["top_p"]
        if params.get("stop"):
            body["stop"] = list(params["stop"])
        if params.get("seed") is not None:
            body["seed"] = params["seed"]
        if self.role.sends_hf_generation_config:
            # transformers serve keeps the model's own do_sample (often False) unless told otherwise.
            gen = {"do_sample": params["temperature"] > 0}
            if params["temperature"] > 0:
                gen["temperature"] = params["temperature"]
                if params.get("top_p") is not None:
                    gen["top_p"] = params["top_p"]
            body["generation_config"] = json.dumps(gen)
        body.update(self.role.extra_body)
        return body

    async def complete(self, request: ChatRequest, params: dict[str, Any]) -> Answer:
        import httpx

        client = self.client()
        if request.prefill is not None and request.messages and self.renderer and not self.renderer.loaded:
            await asyncio.to_thread(lambda: self.renderer.tokenizer)  # load once, off the event loop
        prompt = self.completion_text(request)
        path = "/completions" if prompt is not None else "/chat/completions"
        # The SDK's generic `post` (auth, base_url, timeouts, typed status errors) with a plain JSON
        # body: `create()`'s typed-parameter transform and response models cost more CPU than the
        # request itself on a fast local server, and reading the JSON here lets us tell a malformed
        # answer from a good one.
        response = await client.post(path, body=self.body(request, params, prompt), cast_to=httpx.Response)
        try:
            data = json.loads(response.content)
        except ValueError as err:
            raise MalformedResponse(f"the response is not JSON ({err})") from None
        if not isinstance(data, dict):
            raise MalformedResponse(f"the response is a JSON {type(data).__name__}, not an object")
        choice = _first_choice(data)
        if prompt is not None:
            text = choice.get("text")
        else:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        usage = data.get("usage")
        return Answer(
            text=_check_text(text),
            finish_reason=choice.get("finish_reason"),
            usage=_usage(usage, "prompt_tokens", "completion_tokens"),
            model=self.report_model or data.get("model") or self.role.model,
        )


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise MalformedResponse("no choices in the response")
    return choices[0]


def _usage(usage: Any, prompt_key: str, completion_key: str) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    try:
        return Usage(int(usage.get(prompt_key) or 0), int(usage.get(completion_key) or 0))
    except (TypeError, ValueError):
        return None


class AnthropicBackend(SDKClientBackend):
    """Claude through the Messages API. A raw `prompt` is sent as one user message (the Messages API
    has no plain completion); system messages go to the `system` field; a prefill is the trailing
    assistant message, which Claude continues (the API's own prefill)."""

    def __init__(self, role: RoleConfig):
        self.role = role

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
        kwargs["extra_body"] = {**extra, **self.role.extra_body}
        response = await client.messages.create(**kwargs)
        blocks = getattr(response, "content", None)
        if blocks is None:
            raise MalformedResponse("no content in the response")
        text = "".join(getattr(block, "text", "") or "" for block in blocks if getattr(block, "type", "") == "text")
        usage = getattr(response, "usage", None)
        return Answer(
            text=_check_text(text),
            finish_reason=anthropic_finish_reason(getattr(response, "stop_reason", None)),
            usage=Usage(int(usage.input_tokens or 0), int(usage.output_tokens or 0)) if usage else None,
            model=getattr(response, "model", None) or self.role.model,
        )


def anthropic_finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic's `stop_reason` in the OpenAI vocabulary where it matters: `max_tokens` (the answer was
    cut off at the token limit) is `length`, as every stage checks it; other reasons pass unchanged."""
    return "length" if stop_reason == "max_tokens" else stop_reason
