"""Backends: how one request becomes one answer, one class per backend, one module each.

A backend subclasses `Backend`, names itself (`name = "openai"`, the value of a role's `backend:`
key), declares its own role keys as a frozen dataclass `Options` (fields made with
`schema.setting`, defaults included), and implements `complete`. Defining the class registers it;
every module in this package is imported when a backend is first looked up, so a new backend is one
module here plus one preset in `conf/llm/`. Backends raise on any problem: the session retries,
counts, caches and records failures for all of them alike.

* `openai`: the `openai` SDK (async) against any OpenAI-compatible server (OpenAI, vLLM, `transformers
  serve`, llama.cpp); with an empty `base_url` it starts a managed loopback server first.
* `anthropic`: the `anthropic` SDK (Messages API), e.g. the paper's Claude 3 judge.
* `inprocess`: batched transformers generation in this process, no server.

The SDKs' own retries are off (`max_retries=0`): retries, backoff and Retry-After are handled once,
in the session, for every backend alike. An API key is read from the env var the role names when the
client is first needed, never stored in config or logged.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from safer_instruct.errors import ConfigError
from safer_instruct.llm.faults import EmptyCompletion, Transient
from safer_instruct.llm.types import ChatRequest, Usage
from safer_instruct.schema import setting

if TYPE_CHECKING:
    from safer_instruct.llm.config import RoleConfig
    from safer_instruct.llm.session import LLMSession

_REGISTRY: dict[str, type[Backend]] = {}


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str | None
    usage: Usage | None  # None when the server did not say
    model: str


@dataclass(frozen=True)
class NoOptions:
    """A backend without role keys of its own."""


class Backend:
    """One role's way of answering requests. Subclasses set `name` and `Options` and implement
    `complete`; the class methods answer from the config alone (no backend is built for them: dry runs
    and prompt set-up ask them too). From the session a backend may use `shared(key, make)` (an object
    shared by the session's roles and closed with it, e.g. a managed server), `log_dir` and
    `roles_config`."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return  # a shared base (e.g. SDKClientBackend), not a backend of its own
        if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
            raise TypeError(f"two LLM backends are named '{name}': {_REGISTRY[name].__module__} and {cls.__module__}")
        _REGISTRY[name] = cls

    def __init__(self, role: RoleConfig, session: LLMSession | None = None):
        self.role = role
        self.options = role.options
        self.session = session

    @classmethod
    def check(cls, role: RoleConfig) -> None:
        """Raise a ConfigError, naming the key and the fix, for settings this backend cannot send."""

    @classmethod
    def runs_locally(cls, role: RoleConfig) -> bool:  # noqa: ARG003
        """Whether we run the model ourselves (costs nothing; `RoleConfig.managed`)."""
        return False

    @classmethod
    def prefill_support(cls, role: RoleConfig) -> str:  # noqa: ARG003
        """How a prefill is sent: `native`, `template` (rendered here, see chat.py) or `none` (dropped)."""
        return "none"

    @classmethod
    def transient_errors(cls) -> Transient:
        """The backend's own exception classes (its SDK's) that mean `timeout` or `connection error`:
        retried and named so in the failures file, like Python's TimeoutError and ConnectionError."""
        return {}

    def prepare(self) -> None:
        """Everything that can fail for the whole role (a missing key, loading a model), before any request."""

    async def complete(self, request: ChatRequest, params: dict[str, Any]) -> Answer:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what `prepare` and `complete` opened (clients, threads)."""


@functools.cache
def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def backend_names() -> tuple[str, ...]:
    _discover()
    return tuple(sorted(_REGISTRY))


def backend_class(name: str) -> type[Backend]:
    _discover()
    return _REGISTRY[name]


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


def check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise EmptyCompletion("no text in the completion")
    if text == "":
        raise EmptyCompletion("the completion text is empty")
    return text


class SDKClientBackend(Backend):
    """What the SDK backends share: one async SDK client per role, made on first use with the role's
    API key (`prepare` makes it, so a missing key fails before any request) and closed by `aclose`.
    A subclass says how to make it (`new_client`)."""

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


@dataclass(frozen=True)
class RequestOptions:
    """Role keys of the backends that send JSON requests."""

    extra_body: dict[str, Any] = setting(help="Extra JSON fields for every request.", factory=dict)
