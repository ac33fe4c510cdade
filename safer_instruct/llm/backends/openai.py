"""`openai`: any OpenAI-compatible server through the `openai` SDK, or a managed one started for the role.

With `base_url` set, requests go there (OpenAI, vLLM, `transformers serve`, llama.cpp). With it empty,
the backend first starts a managed loopback server of the role's model (`server:` keys, `servers.py`),
shared by every role of the session with the same model and stopped when the session ends.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
from dataclasses import dataclass
from typing import Any

from safer_instruct.errors import ConfigError
from safer_instruct.llm.backends import Answer, RequestOptions, SDKClientBackend, check_text
from safer_instruct.llm.chat import ChatRenderer, has_local_weights
from safer_instruct.llm.faults import MalformedResponse
from safer_instruct.llm.servers import ManagedServer, ServerConfig
from safer_instruct.llm.types import ChatRequest, Usage
from safer_instruct.schema import setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenAIOptions(RequestOptions):
    # transformers serve samples only when asked through a `generation_config` in the request body.
    hf_generation_config: str = setting("auto", "Send do_sample/temperature the way transformers serve understands: "
                                                "auto (when the server is a managed transformers serve), true, false.",
                                        choices=("auto", "true", "false"))  # fmt: skip
    server: ServerConfig = setting(help="The managed server started when base_url is empty.", factory=ServerConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hf_generation_config", str(self.hf_generation_config).lower())


class OpenAIBackend(SDKClientBackend):
    """Chat requests go to /chat/completions (the server applies the chat template), raw prompts to
    /completions. A prefilled chat request is rendered here by `renderer` (the model's own chat
    template, see `chat.py`) and continued with /completions; the session sends one only when the
    role has local weights for a renderer, and drops the prefill otherwise."""

    name = "openai"
    Options = OpenAIOptions

    def __init__(self, role, session=None):
        super().__init__(role, session)
        self.base_url = role.base_url
        self.served_model = role.model
        # Name written into answers: the config's model for servers we run (the served name is a path).
        self.report_model: str | None = None
        self.renderer = ChatRenderer(role.model) if role.prefill_support == "template" else None

    @classmethod
    def runs_locally(cls, role) -> bool:
        return not role.base_url

    @classmethod
    def prefill_support(cls, role) -> str:
        return "template" if cls.runs_locally(role) or has_local_weights(role.model) else "none"

    @classmethod
    def sends_generation_config(cls, role) -> bool:
        """Whether requests carry transformers serve's `generation_config` (`hf_generation_config`)."""
        options = role.options
        if options.hf_generation_config == "auto":
            return not role.base_url and options.server.kind == "transformers"
        return options.hf_generation_config == "true"

    @classmethod
    def unreproducible_samples(cls, role) -> str | None:
        """Why seeded samples would differ run to run, or None: transformers serve seeds its one global torch
        generator per request, so with several requests in flight the draws interleave (vLLM seeds each)."""
        kind = role.options.server.kind if not role.base_url else None
        if kind == "transformers" and role.seed is not None and role.temperature > 0 and role.max_concurrency > 1:
            return (f"{role.name}: seed={role.seed} with max_concurrency={role.max_concurrency} on transformers serve: "
                    "its samples differ run to run (one global generator per server); set "
                    f"{role.name}.max_concurrency=1 to repeat them (the server runs requests in turn anyway)")
        return None

    @classmethod
    def transient_errors(cls):
        import openai

        return {"timeout": (openai.APITimeoutError,), "connection error": (openai.APIConnectionError,)}

    def prepare(self) -> None:
        if why := self.unreproducible_samples(self.role):
            log.warning(why)
        if not self.role.base_url:
            server = self.managed_server()
            self.base_url, self.served_model, self.report_model = server.base_url, server.served_model, self.role.model
        self.client()

    def managed_server(self) -> ManagedServer:
        """The session's server of this model, started on first use; shared by roles with the same model."""
        from safer_instruct.model_kit import resolve_model

        role, settings = self.role, self.options.server
        model_path = resolve_model(role.model)

        def new_server() -> ManagedServer:
            hidden = tuple(c.api_key_env for c in self.session.roles_config.values() if c.api_key_env)
            server = ManagedServer(role.model, model_path, settings, log_dir=self.session.log_dir, hidden_env=hidden)
            atexit.register(server.stop)  # a session never closed still stops its servers at exit
            return server

        server = self.session.shared(("server", settings.kind, model_path), new_server)
        if server.cfg != settings:
            log.warning("role '%s' shares the %s server of %s started with another role's server settings",
                        role.name, settings.kind, role.model)  # fmt: skip
        if not server.running:
            server.start()
        return server

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
        """The JSON body of a chat (`prompt` None) or text completion request (`prompt`: `completion_text`)."""
        body: dict[str, Any] = {"model": self.served_model, "max_tokens": params["max_tokens"],
                                "temperature": params["temperature"]}  # fmt: skip
        if prompt is not None:
            body["prompt"] = prompt
        else:
            body["messages"] = [dict(m) for m in request.messages]
        body.update({key: params[key] for key in ("top_p", "stop", "seed") if params.get(key) is not None})
        if self.sends_generation_config(self.role):
            # transformers serve keeps the model's own do_sample (often False) unless told otherwise.
            gen = {"do_sample": params["temperature"] > 0}
            if params["temperature"] > 0:
                gen["temperature"] = params["temperature"]
                if params.get("top_p") is not None:
                    gen["top_p"] = params["top_p"]
            body["generation_config"] = json.dumps(gen)
        body.update(self.options.extra_body)
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
        return Answer(
            text=check_text(text),
            finish_reason=choice.get("finish_reason"),
            usage=_usage(data.get("usage")),
            model=self.report_model or data.get("model") or self.role.model,
        )


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise MalformedResponse("no choices in the response")
    return choices[0]


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    try:
        return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return None
