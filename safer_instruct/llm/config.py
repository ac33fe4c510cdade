"""Role configs: what a `conf/llm/*.yaml` preset means, read once into typed objects.

A role (`inducer`, `expert`, `judge`, `policy`) is a config node with the keys of the presets in
`conf/llm/`. Key names that outside checks rely on: `model`, `base_url` (empty = a server managed by
us, or in-process generation), `api_key_env` (the NAME of the env var holding the key),
`max_concurrency`, `temperature`, `max_tokens`. Unknown keys are ignored here: Hydra already rejects
overrides of keys that no preset defines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError
from safer_instruct.paths import CONF_DIR

log = logging.getLogger(__name__)

BACKENDS = ("openai", "anthropic", "inprocess")
SERVER_KINDS = ("transformers", "vllm")
PRICE_TABLE = CONF_DIR / "llm" / "prices.yaml"


@dataclass(frozen=True)
class ServerConfig:
    """How to start a managed server when `base_url` is empty (backend `openai`)."""

    kind: str = "transformers"  # transformers (CPU/GPU) | vllm (GPU)
    device: str = "auto"  # transformers serve --device
    dtype: str = "auto"
    startup_timeout_s: float = 300.0
    tensor_parallel_size: int = 1  # vllm only
    gpu_memory_utilization: float | None = None  # vllm only
    max_model_len: int | None = None  # vllm only
    extra_args: tuple[str, ...] = ()
    log_dir: str | None = None  # server logs; default: next to failures.jsonl, else a temp dir


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True)
class RoleConfig:
    name: str
    model: str
    backend: str = "openai"
    base_url: str = ""
    api_key_env: str = ""
    max_concurrency: int = 8
    temperature: float = 0.7
    max_tokens: int = 256
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    rpm: float | None = None
    tpm: float | None = None
    price: Price | None = None  # None: look the model up in conf/llm/prices.yaml
    # transformers serve samples only when asked through a `generation_config` in the request body;
    # auto = send it when the server is a managed transformers serve.
    hf_generation_config: str = "auto"  # auto | true | false
    extra_body: dict[str, Any] = field(default_factory=dict)
    server: ServerConfig = field(default_factory=ServerConfig)
    # How a request's prefill is sent: auto = the backend's way (Anthropic: a trailing assistant
    # message; local weights: the chat template rendered here, continued as a plain completion), and
    # dropped with a warning for a remote OpenAI-compatible model without local weights; off = never.
    prefill: str = "auto"  # auto | off
    # The text verdict answers (filters, judges) start with, so that small models keep the verdict
    # format; None = not prefilled. Read by the stages that ask for verdicts.
    verdict_prefill: str | None = None
    batch_size: int = 8  # inprocess only
    dtype: str = "auto"  # inprocess only
    device: str = "cpu"  # inprocess only

    @property
    def managed(self) -> bool:
        """True when we start the model ourselves (a managed server or in-process)."""
        return self.backend == "inprocess" or (self.backend == "openai" and not self.base_url)

    @property
    def prefill_support(self) -> str:
        """How this role's backend continues a prefill: `native` (Anthropic's trailing assistant
        message), `template` (the chat template rendered here with the model's tokenizer, then a plain
        completion: managed servers, in-process, or any server of a model whose weights are local) or
        `none` (a remote model we cannot render for, or `prefill: off`)."""
        from safer_instruct.llm.chat import has_local_tokenizer

        if self.prefill == "off":
            return "none"
        if self.backend == "anthropic":
            return "native"
        if self.managed or has_local_tokenizer(self.model):
            return "template"
        return "none"

    @property
    def verdict_prefill_sent(self) -> str | None:
        """The verdict prefill as it reaches the model (None: not configured, or not sendable here)."""
        return self.verdict_prefill if self.prefill_support != "none" else None

    @property
    def sends_hf_generation_config(self) -> bool:
        if self.hf_generation_config == "auto":
            return self.backend == "openai" and not self.base_url and self.server.kind == "transformers"
        return self.hf_generation_config == "true"


def _plain(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(node, Mapping):
        return dict(node)
    raise ConfigError(f"a role config must be a mapping, got {type(node).__name__}")


def _number(role: str, key: str, value: Any, kind=float, minimum: float | None = None, optional=False):
    if value is None or value == "":
        if optional:
            return None
        raise ConfigError(f"{role}.{key} must be set")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{role}.{key} must be a {kind.__name__}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{role}.{key} must be >= {minimum}, got {value!r}")
    return number


def _stops(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(str(s) for s in value)


def parse_role(name: str, node: Any) -> RoleConfig:
    """A RoleConfig from a role's config node, with a ConfigError naming the bad key."""
    raw = _plain(node)
    model = raw.get("model")
    if model in (None, "", "???"):
        raise ConfigError(f"{name}.model must be set (a kit: model, a folder, a hub id or an API model name)")
    backend = str(raw.get("backend") or "openai")
    if backend not in BACKENDS:
        raise ConfigError(f"{name}.backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    api_key_env = str(raw.get("api_key_env") or "")
    if api_key_env and not api_key_env.replace("_", "").isalnum():
        # A key pasted where the env var name belongs must not travel further (it would be logged).
        raise ConfigError(f"{name}.api_key_env must be the NAME of an environment variable (letters, digits, _)")
    backoff = raw.get("backoff") or {}
    server_raw = raw.get("server") or {}
    kind = str(server_raw.get("kind") or "transformers")
    if kind not in SERVER_KINDS:
        raise ConfigError(f"{name}.server.kind must be one of {', '.join(SERVER_KINDS)}, got '{kind}'")
    server = ServerConfig(
        kind=kind,
        device=str(server_raw.get("device") or "auto"),
        dtype=str(server_raw.get("dtype") or "auto"),
        startup_timeout_s=_number(name, "server.startup_timeout_s", server_raw.get("startup_timeout_s", 300), minimum=1),
        tensor_parallel_size=_number(name, "server.tensor_parallel_size", server_raw.get("tensor_parallel_size", 1), int, 1),
        gpu_memory_utilization=_number(
            name, "server.gpu_memory_utilization", server_raw.get("gpu_memory_utilization"), optional=True
        ),
        max_model_len=_number(name, "server.max_model_len", server_raw.get("max_model_len"), int, 1, optional=True),
        extra_args=tuple(str(a) for a in (server_raw.get("extra_args") or ())),
        log_dir=server_raw.get("log_dir") or None,
    )
    price_raw = raw.get("price")
    price = None
    if price_raw:
        price = Price(
            input_per_mtok=_number(name, "price.input_per_mtok", price_raw.get("input_per_mtok", 0), minimum=0),
            output_per_mtok=_number(name, "price.output_per_mtok", price_raw.get("output_per_mtok", 0), minimum=0),
        )
    hf_gen = str(raw.get("hf_generation_config", "auto")).lower()
    if hf_gen not in ("auto", "true", "false"):
        raise ConfigError(f"{name}.hf_generation_config must be auto, true or false, got '{hf_gen}'")
    prefill = str(raw.get("prefill") or "auto").lower()
    if prefill not in ("auto", "off"):
        raise ConfigError(f"{name}.prefill must be auto or off, got '{prefill}'")
    verdict_prefill = read_verdict_prefill(name, raw)
    if verdict_prefill and backend == "anthropic" and verdict_prefill != verdict_prefill.rstrip():
        raise ConfigError(f"{name}.verdict_prefill must not end in whitespace: Anthropic's API rejects such a prefill")
    return RoleConfig(
        name=name,
        model=str(model),
        backend=backend,
        base_url=str(raw.get("base_url") or "").rstrip("/"),
        api_key_env=api_key_env,
        max_concurrency=_number(name, "max_concurrency", raw.get("max_concurrency", 8), int, 1),
        temperature=_number(name, "temperature", raw.get("temperature", 0.7), minimum=0),
        max_tokens=_number(name, "max_tokens", raw.get("max_tokens", 256), int, 1),
        top_p=_number(name, "top_p", raw.get("top_p"), optional=True),
        stop=_stops(raw.get("stop")),
        seed=_number(name, "seed", raw.get("seed"), int, optional=True),
        timeout_s=_number(name, "timeout_s", raw.get("timeout_s", 120), minimum=0.01),
        max_retries=_number(name, "max_retries", raw.get("max_retries", 4), int, 0),
        backoff_initial_s=_number(name, "backoff.initial_s", backoff.get("initial_s", 1.0), minimum=0),
        backoff_max_s=_number(name, "backoff.max_s", backoff.get("max_s", 60.0), minimum=0),
        max_retry_after_s=_number(name, "backoff.max_retry_after_s", backoff.get("max_retry_after_s", 300), minimum=0),
        rpm=_number(name, "rpm", raw.get("rpm"), minimum=0.001, optional=True),
        tpm=_number(name, "tpm", raw.get("tpm"), minimum=1, optional=True),
        price=price,
        hf_generation_config=hf_gen,
        extra_body=dict(raw.get("extra_body") or {}),
        server=server,
        prefill=prefill,
        verdict_prefill=verdict_prefill,
        batch_size=_number(name, "batch_size", raw.get("batch_size", 8), int, 1),
        dtype=str(raw.get("dtype") or "auto"),
        device=str(raw.get("device") or "cpu"),
    )


def read_verdict_prefill(name: str, node: Any) -> str | None:
    """A role's `verdict_prefill` (None when unset, null or empty), checked to be text."""
    value = node.get("verdict_prefill") if node is not None else None
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}.verdict_prefill must be text (e.g. '{{\"verdict\": \"') or null, got {value!r}")
    return value


ROLE_KEYS = tuple(f.name for f in fields(RoleConfig))


@lru_cache(maxsize=4)
def load_price_table(path: Path = PRICE_TABLE) -> dict[str, Price]:
    """Model name -> Price, from `conf/llm/prices.yaml` (`models: {name: {input_per_mtok, output_per_mtok}}`)."""
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    table = {}
    for model, entry in (data.get("models") or {}).items():
        table[str(model)] = Price(float(entry.get("input_per_mtok", 0)), float(entry.get("output_per_mtok", 0)))
    return table


def price_for(role: RoleConfig, table: Mapping[str, Price] | None = None) -> Price | None:
    """The role's price: its own `price`, else the table (exact name, then longest prefix), else
    zero for local weights (run by us, or by a local server), else None (unknown)."""
    if role.price is not None:
        return role.price
    table = load_price_table() if table is None else table
    if role.model in table:
        return table[role.model]
    prefixes = [name for name in table if role.model.startswith(name)]
    if prefixes:
        return table[max(prefixes, key=len)]
    if role.managed or role.model.startswith("kit:") or Path(role.model).expanduser().is_dir():
        return Price()  # weights on this machine, served by us or by a server the user started
    return None
