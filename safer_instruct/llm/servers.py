"""Managed local servers: `transformers serve` (CPU/GPU) or `vllm serve` (GPU) on a free loopback port.

A role with a local model and an empty `base_url` gets one. The server runs in its own process group
so that stopping it stops everything it started (vLLM's workers too); it is stopped when the session
ends (also on Ctrl-C, SIGTERM and errors), at interpreter exit, and, on Linux, by the kernel if our
process dies without cleaning up (parent-death signal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from safer_instruct.errors import ConfigError, SaferInstructError
from safer_instruct.schema import setting

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class ServerConfig:
    """How to start a managed server (a role's `server:` keys, read when its `base_url` is empty)."""

    kind: str = setting("transformers", "transformers (`transformers serve`, CPU or GPU) or vllm (`vllm serve`, GPU).",
                        choices=("transformers", "vllm"))  # fmt: skip
    device: str = setting("auto", "transformers serve --device (auto, cpu, cuda:0).")
    dtype: str = setting("auto", "Weights' dtype; for vllm one of its --dtype choices: auto, half, float16, "
                                 "bfloat16, float, float32.")  # fmt: skip
    startup_timeout_s: float = setting(300.0, "Seconds the server may take to become healthy (vLLM's first start "
                                              "compiles CUDA graphs).", minimum=1)  # fmt: skip
    tensor_parallel_size: int = setting(1, "vllm only: GPUs to split the model over (e.g. 4 or 8 for a 7B-70B model "
                                           "on one node); must divide the model's attention heads.", minimum=1)  # fmt: skip
    gpu_memory_utilization: float | None = setting(None, "vllm only: share of GPU memory to use (null: vLLM's default).")
    max_model_len: int | None = setting(None, "vllm only: longest sequence; null: the model's own (its config.json), "
                                              "a larger value fails before vLLM starts.", minimum=1)  # fmt: skip
    extra_args: tuple[str, ...] = setting((), "More command-line arguments for the server.")
    log_dir: str | None = setting(None, "Server logs; null: beside failures.jsonl, else a temp dir.")


class ServerStartError(SaferInstructError):
    """A managed server did not become healthy (the message holds its log tail)."""


def free_port() -> int:
    """A port that was free a moment ago (bind to 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def transformers_command(model_path: str, port: int, cfg: ServerConfig) -> list[str]:
    """`transformers serve` pinned to one model (preloaded, so health means ready)."""
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", model_path,
           "--host", LOOPBACK, "--port", str(port), "--device", cfg.device, "--dtype", cfg.dtype]  # fmt: skip
    return cmd + list(cfg.extra_args)


def vllm_command(model_path: str, port: int, cfg: ServerConfig) -> list[str]:
    """`vllm serve` with tensor parallelism from config (GPU nodes), checked first against what vLLM
    accepts for this model (`vllm_max_model_len`), so a preset that vLLM would refuse fails here."""
    max_model_len = vllm_max_model_len(model_path, cfg)
    beside = Path(sys.executable).parent / "vllm"  # the venv's own, else the one on PATH
    executable = str(beside) if beside.exists() else (shutil.which("vllm") or "vllm")
    cmd = [executable, "serve", model_path, "--host", LOOPBACK, "--port", str(port),
           "--tensor-parallel-size", str(cfg.tensor_parallel_size), "--dtype", cfg.dtype]  # fmt: skip
    if cfg.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + list(cfg.extra_args)


# vLLM's `serve --dtype` choices (docs.vllm.ai, engine arguments).
VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# The config.json keys vLLM derives a model's maximum length from; the smallest one present wins.
MAX_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
                   "max_seq_length", "seq_len")  # fmt: skip
# RoPE scalings whose factor vLLM does not multiply into the derived length.
UNSCALED_ROPE_TYPES = ("default", "su", "longrope", "llama3", "mrope")


def model_config_json(model_path: str) -> dict | None:
    """The model's config.json (its text part for multimodal configs): a local folder, or a hub id
    already in the local hub cache; None when neither (nothing is downloaded)."""
    from safer_instruct.identity import cached_hub_file

    path = Path(model_path).expanduser() / "config.json"
    path = path if path.is_file() else cached_hub_file(model_path, "config.json")
    if path is None:
        return None
    import json

    config = json.loads(path.read_text())
    return config.get("text_config") or config


def model_max_length(config: dict, sliding_window_disabled: bool = False) -> tuple[int, str] | None:
    """The longest sequence vLLM derives from a config.json, and the key it comes from (None: no key).

    The smallest of `MAX_LENGTH_KEYS` present; with `--disable-sliding-window` also the sliding
    window; times the RoPE scaling factor where vLLM applies one (linear, dynamic, yarn)."""
    found = [(int(config[key]), key) for key in MAX_LENGTH_KEYS if isinstance(config.get(key), (int, float))]
    if sliding_window_disabled and isinstance(config.get("sliding_window"), (int, float)):
        found.append((int(config["sliding_window"]), "sliding_window"))
    if not found:
        return None
    length, key = min(found)
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    if isinstance(scaling.get("factor"), (int, float)) and rope_type not in UNSCALED_ROPE_TYPES:
        if rope_type == "yarn" and scaling.get("original_max_position_embeddings"):
            length = int(scaling["original_max_position_embeddings"])
        length, key = int(length * scaling["factor"]), f"{key} x rope_scaling.factor {scaling['factor']}"
    return length, key


def vllm_max_model_len(model_path: str, cfg: ServerConfig) -> int | None:
    """Check a vLLM server preset against the model and return the `--max-model-len` to pass.

    What vLLM refuses at start-up fails here with a ConfigError naming both numbers: a dtype outside
    its choices, a tensor parallel size that is not positive or does not divide the attention heads
    (and key/value heads), a max model length above the model's. `server.max_model_len: null` follows
    the model (its config's length); None is returned only when the config cannot be read here (a hub
    id not in the local cache), and vLLM then derives the length itself."""
    if cfg.dtype not in VLLM_DTYPES:
        raise ConfigError(f"server.dtype '{cfg.dtype}' is not one of vLLM's --dtype choices: {', '.join(VLLM_DTYPES)}")
    tensor_parallel = cfg.tensor_parallel_size
    if not isinstance(tensor_parallel, int) or tensor_parallel < 1:
        raise ConfigError(f"server.tensor_parallel_size must be a positive number of GPUs, got {tensor_parallel!r}")
    if cfg.gpu_memory_utilization is not None and not 0 < cfg.gpu_memory_utilization <= 1:
        raise ConfigError(f"server.gpu_memory_utilization is a share of GPU memory in (0, 1], got {cfg.gpu_memory_utilization}")
    if cfg.max_model_len is not None and cfg.max_model_len < 1:
        raise ConfigError(f"server.max_model_len must be >= 1 or null (the model's own), got {cfg.max_model_len}")
    config = model_config_json(model_path)
    if config is None:
        log.info("no config.json of %s here: vLLM checks its settings against the model itself", model_path)
        return cfg.max_model_len
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if isinstance(heads, int) and heads % tensor_parallel:
        raise ConfigError(
            f"server.tensor_parallel_size={tensor_parallel} does not divide the {heads} attention heads of {model_path} "
            f"(num_attention_heads in its config.json), so vLLM would refuse to start: use one of "
            f"{', '.join(str(n) for n in range(1, heads + 1) if heads % n == 0 and n <= 16)}"
        )
    if isinstance(kv_heads, int) and kv_heads % tensor_parallel and tensor_parallel % kv_heads:
        raise ConfigError(
            f"server.tensor_parallel_size={tensor_parallel} neither divides nor is a multiple of the {kv_heads} key/value "
            f"heads of {model_path} (num_key_value_heads in its config.json), so vLLM would refuse to start"
        )
    limit = model_max_length(config, sliding_window_disabled="--disable-sliding-window" in cfg.extra_args)
    if limit is None:
        return cfg.max_model_len
    length, key = limit
    if cfg.max_model_len is None:
        return length
    if cfg.max_model_len > length:
        raise ConfigError(
            f"server.max_model_len={cfg.max_model_len} is larger than the {length} tokens {model_path} supports "
            f"({key} in its config.json), so vLLM would refuse to start: set server.max_model_len=null to follow the "
            f"model, or a value <= {length}"
        )
    return cfg.max_model_len


COMMANDS = {"transformers": transformers_command, "vllm": vllm_command}


def _parent_death_signal() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, not on Linux
        pass


class ManagedServer:
    """One local server process serving one model."""

    def __init__(self, model_ref: str, model_path: str, cfg: ServerConfig, log_dir: str | Path | None = None,
                 hidden_env: tuple[str, ...] = ()):  # fmt: skip
        self.model_ref = model_ref
        self.model_path = model_path
        self.cfg = cfg
        self.log_dir = Path(cfg.log_dir or log_dir or tempfile.gettempdir())
        self.hidden_env = hidden_env
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def served_model(self) -> str:
        """The model name requests must carry (both servers name it by the path they loaded)."""
        return self.model_path

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, port: int) -> list[str]:
        return COMMANDS[self.cfg.kind](self.model_path, port, self.cfg)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in self.hidden_env}
        # transformers serve answers 500 on /v1/models when the hub cache folder is missing.
        hub_cache = Path(env.get("HF_HUB_CACHE") or Path(env.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub")
        hub_cache.mkdir(parents=True, exist_ok=True)
        env["HF_HUB_CACHE"] = str(hub_cache)
        if Path(self.model_path).is_dir():
            env["HF_HUB_OFFLINE"] = "1"
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self) -> ManagedServer:
        with self._lock:
            if self.running:
                return self
            self.port = free_port()
            cmd = self.command(self.port)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.log_dir / f"{self.cfg.kind}-serve-{self.port}.log"
            log.info("starting %s serve for %s on %s (log: %s)", self.cfg.kind, self.model_ref, self.url, self.log_path)
            if self.cfg.kind == "vllm" and not shutil.which(cmd[0]) and not Path(cmd[0]).exists():
                raise ServerStartError(
                    f"server.kind=vllm needs the `vllm` command (pip install vllm on a GPU machine); not found for "
                    f"{sys.executable}. Use server.kind=transformers on CPU."
                )
            with open(self.log_path, "ab") as log_file:
                self.proc = subprocess.Popen(
                    cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
                    start_new_session=True,  # own process group: stop() signals all of it
                    preexec_fn=_parent_death_signal if threading.current_thread() is threading.main_thread() else None,
                )  # fmt: skip
            try:
                self._wait_healthy()
            except BaseException:
                self.stop()
                raise
            return self

    def _wait_healthy(self) -> None:
        started = time.monotonic()
        while time.monotonic() < started + self.cfg.startup_timeout_s:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.cfg.kind} serve for {self.model_ref} exited with code {self.proc.returncode} before "
                    f"becoming healthy. Log {self.log_path}, last lines:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        log.info("%s serve for %s healthy after %.1f s", self.cfg.kind, self.model_ref,
                                 time.monotonic() - started)  # fmt: skip
                        return
            except OSError:  # not listening yet (URLError, connection refused, timeout)
                pass
            time.sleep(0.25)
        raise ServerStartError(
            f"{self.cfg.kind} serve for {self.model_ref} was not healthy after {self.cfg.startup_timeout_s:.0f} s "
            f"(server.startup_timeout_s). Log {self.log_path}, last lines:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def stop(self, grace_s: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        log.info("stopping %s serve for %s (pid %d)", self.cfg.kind, self.model_ref, proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
        # Whatever is left of the group (the leader if it ignored SIGTERM, or workers it spawned).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10.0)

    close = stop  # the session closes what its roles share (`LLMSession.shared`) this way
