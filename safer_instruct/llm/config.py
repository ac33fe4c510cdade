"""Role configs: the one schema of an LLM role's keys and their defaults, read into typed objects.

A role (`inducer`, `expert`, `judge`, `policy`) is a config node. Its keys are the fields of
`RoleConfig` (what every role has) plus the fields of its backend's `Options` (e.g. in-process
`batch_size`; see `backends/`), side by side in one node. These dataclasses are the only source of
defaults: Hydra gets them as the configs `llm/schema` (the role's keys and the default backend's) and
`llm/options/<backend>` (registered below), which the `conf/llm/*.yaml` presets start from and override
where they mean to. Key names that outside checks
rely on: `model`, `base_url` (empty = a server managed by us, or in-process generation), `api_key_env`
(the NAME of the env var holding the key), `max_concurrency`, `temperature`, `max_tokens`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safer_instruct import schema
from safer_instruct.errors import ConfigError
from safer_instruct.llm.backends import backend_class, backend_names
from safer_instruct.llm.chat import has_local_weights
from safer_instruct.paths import CONF_DIR
from safer_instruct.schema import setting

log = logging.getLogger(__name__)

PRICE_TABLE = CONF_DIR / "llm" / "prices.yaml"
SCHEMA_NAME = "schema"  # `llm/schema`: the config node every preset's defaults list starts from


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float = setting(0.0, "US dollars per million prompt tokens.", minimum=0)
    output_per_mtok: float = setting(0.0, "US dollars per million completion tokens.", minimum=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True)
class Backoff:
    """Waits between retries: exponential with jitter, or as long as the server's Retry-After asks."""

    initial_s: float = setting(1.0, "First wait before a retry, in seconds.", minimum=0)
    max_s: float = setting(60.0, "Longest exponential wait, in seconds.", minimum=0)
    max_retry_after_s: float = setting(300.0, "Longest Retry-After honoured, in seconds.", minimum=0)


VERDICT_PREFILL_EXAMPLE = '{"verdict": "'


@dataclass(frozen=True)
class RoleConfig:
    """One LLM role. Defaults suit a remote API (several requests in flight, patient retries); the
    `conf/llm/` presets say what differs for theirs (e.g. `local`: slow CPU servers, few retries)."""

    name: str = setting(help="The role's name (inducer, expert, judge, policy); errors name keys by it.")
    model: str = setting(help="A kit: model, a folder, a hub id or an API model name.")
    backend: str = setting("openai", "Which backend sends the requests: a name registered in backends/ "
                                     "(openai, anthropic, inprocess).")  # fmt: skip
    base_url: str = setting("", "The server's URL; empty: a server managed by us (openai) or the API's own.")
    api_key_env: str = setting("", "The NAME of the environment variable holding the API key ('' = no key).")
    max_concurrency: int = setting(8, "Requests in flight at once.", minimum=1)
    temperature: float = setting(0.7, "Sampling temperature (0: greedy).", minimum=0)
    max_tokens: int = setting(256, "Longest answer, in tokens.", minimum=1)
    top_p: float | None = setting(None, "Nucleus sampling share (null: the backend's default).")
    stop: tuple[str, ...] | None = setting(None, "Texts that end an answer (null: none).")
    seed: int | None = setting(None, "Set: each sample_index gets seed + sample_index (reproducible samples).")
    timeout_s: float = setting(120.0, "Per attempt, in seconds.", minimum=0.01)
    max_retries: int = setting(4, "Retries of a request after its first attempt (429, 5xx, timeouts, "
                                  "malformed answers).", minimum=0)  # fmt: skip
    backoff: Backoff = setting(help="Waits between retries.", factory=Backoff)
    rpm: float | None = setting(None, "Requests per minute (null: unlimited).", minimum=0.001)
    tpm: float | None = setting(None, "Tokens per minute (null: unlimited).", minimum=1)
    price: Price | None = setting(None, "Null: conf/llm/prices.yaml by model name; models we run ourselves cost 0.")
    prefill: str = setting("auto", "How a request's prefill is sent. auto: the backend's way (Anthropic: a "
                                   "trailing assistant message; local weights: the chat template rendered here, "
                                   "continued as a plain completion), dropped with a warning where impossible (a "
                                   "remote model without local weights); off: never (YAML's bare `off`, read as "
                                   "false, means off too).", convert=False)  # fmt: skip
    verdict_prefill: str | None = setting(None, f"The text verdict answers (filters, judges) start with, e.g. "
                                                f"'{VERDICT_PREFILL_EXAMPLE}', so that small models keep the verdict "
                                                "format; null: not prefilled.", convert=False)  # fmt: skip
    options: Any = dataclasses.field(default=None, metadata={
        "help": "The backend's own settings (its Options dataclass; None: their defaults). In a config node "
                "they are keys of the role itself.", "flat": True})  # fmt: skip

    def __post_init__(self) -> None:
        name = self.name
        if self.model in (None, "", "???"):
            raise ConfigError(f"{name}.model must be set (a kit: model, a folder, a hub id or an API model name)")
        if self.backend not in backend_names():
            raise ConfigError(f"{name}.backend must be one of {', '.join(backend_names())}, got '{self.backend}'")
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            # A key pasted where the env var name belongs must not travel further (it would be logged).
            raise ConfigError(f"{name}.api_key_env must be the NAME of an environment variable (letters, digits, _)")
        prefill = "off" if self.prefill is False else str(self.prefill or "auto").lower()
        if prefill not in ("auto", "off"):
            raise ConfigError(f"{name}.prefill must be auto or off, got '{prefill}'")
        verdict_prefill = self.verdict_prefill if self.verdict_prefill != "" else None
        if verdict_prefill is not None and not isinstance(verdict_prefill, str):
            raise ConfigError(f"{name}.verdict_prefill must be text (e.g. '{VERDICT_PREFILL_EXAMPLE}') or null, "
                              f"got {verdict_prefill!r}")  # fmt: skip
        options_class = backend_class(self.backend).Options
        options = options_class() if self.options is None else self.options
        if not isinstance(options, options_class):
            raise ConfigError(f"role '{name}': backend '{self.backend}' takes {options_class.__name__} options, "
                              f"got {type(options).__name__}")  # fmt: skip
        for key, value in (("base_url", self.base_url.rstrip("/")), ("prefill", prefill),
                           ("verdict_prefill", verdict_prefill), ("options", options)):  # fmt: skip
            object.__setattr__(self, key, value)
        schema.check(self, name)
        backend_class(self.backend).check(self)

    @property
    def managed(self) -> bool:
        """True when we start the model ourselves (a managed server or in-process)."""
        return backend_class(self.backend).runs_locally(self)

    @property
    def prefill_support(self) -> str:
        """How this role's backend continues a prefill: `native` (Anthropic's trailing assistant
        message), `template` (the chat template rendered here with the model's tokenizer, then a plain
        completion: managed servers, in-process, or any server of a model whose weights are local) or
        `none` (a remote model we cannot render for, or `prefill: off`)."""
        return "none" if self.prefill == "off" else backend_class(self.backend).prefill_support(self)

    @property
    def verdict_prefill_sent(self) -> str | None:
        """The verdict prefill as it reaches the model (None: not configured, or not sendable here)."""
        return self.verdict_prefill if self.prefill_support != "none" else None


def parse_role(name: str, node: Any) -> RoleConfig:
    """A RoleConfig from a role's config node (its keys and its backend's), with a ConfigError naming the bad key."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if node is not None and not isinstance(node, Mapping):
        raise ConfigError(f"a role config must be a mapping, got {type(node).__name__}")
    raw = dict(node or {})
    backend = str(raw.get("backend") or "openai")
    if backend not in backend_names():  # before its options are read: their class depends on it
        raise ConfigError(f"{name}.backend must be one of {', '.join(backend_names())}, got '{backend}'")
    options = schema.read(backend_class(backend).Options, raw, name)
    return schema.read(RoleConfig, raw, name, name=name, backend=backend, options=options)


def schema_node() -> dict[str, Any]:
    """`llm/schema`: every RoleConfig key with its default, and the options of the default backend
    (`openai`, whose presets need nothing more)."""
    node = {key: value for key, value in schema.defaults(RoleConfig).items() if key not in ("name", "options")}
    return {**node, **options_node(node["backend"])}


def options_node(backend: str) -> dict[str, Any]:
    """`llm/options/<backend>`: a backend's own keys with their defaults, which its presets add
    (`defaults: [..., options/inprocess, _self_]`). They sit beside the role's keys, so they must not
    share a name with one."""
    node = schema.defaults(backend_class(backend).Options)
    clash = sorted(set(node) & {f.name for f in dataclasses.fields(RoleConfig)})
    if clash:
        raise ConfigError(f"backend '{backend}' declares option(s) {', '.join(clash)}, which are role keys: rename them")
    return node


def register_role_schema() -> None:
    """Give Hydra the role schema: `llm/schema` (every conf/llm preset's first default) and each
    backend's `llm/options/<name>`."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="llm", name=SCHEMA_NAME, node=schema_node())
    for backend in backend_names():
        store.store(group="llm/options", name=backend, node=options_node(backend))


register_role_schema()


@lru_cache(maxsize=4)
def load_price_table(path: Path = PRICE_TABLE) -> dict[str, Price]:
    """Model name -> Price, from `conf/llm/prices.yaml` (`models: {name: {input_per_mtok, output_per_mtok}}`)."""
    if not path.is_file():
        return {}
    import yaml

    models = (yaml.safe_load(path.read_text()) or {}).get("models") or {}
    return {str(model): Price(float(entry.get("input_per_mtok", 0)), float(entry.get("output_per_mtok", 0)))
            for model, entry in models.items()}  # fmt: skip


def price_for(role: RoleConfig) -> Price | None:
    """The role's price: its own `price`, else the table's longest name that the model's starts with
    (its exact name first), else zero for local weights (run by us, or by a local server), else None."""
    if role.price is not None:
        return role.price
    table = load_price_table()
    prefixes = [name for name in table if role.model.startswith(name)]
    if prefixes:
        return table[max(prefixes, key=len)]
    if role.managed or has_local_weights(role.model):
        return Price()  # weights on this machine, served by us or by a server the user started
    return None
