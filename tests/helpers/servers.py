"""Servers for tests and benchmarks of anything that talks to an LLM.

* `FaultServer`: a loopback OpenAI-compatible server (chat and text completions) that also speaks
  Anthropic's Messages API, written here because a real server will not produce faults on demand.
  It answers deterministically ("answer to: <last user text>") after `delay_s`, counts every
  request, and injects a fault when the request text holds a directive:

      [[fault:429]]        429 with `Retry-After: <retry_after>` (every attempt)
      [[fault:500x2]]      500 for the first 2 attempts of this exact request, then a normal answer
      [[fault:hang]]       no answer for `hang_s` seconds (past the client's timeout)
      [[fault:malformed]]  200 with a body that is not JSON
      [[fault:empty]]      200 with empty content
      [[fault:401]]        401; the error body echoes the Authorization header it received (a leaky
                           server: the client must redact it)
      [[fault:length]]     200 with the normal answer, marked as cut off at the token limit
                           (finish_reason "length"; Anthropic: stop_reason "max_tokens")
  Also 503 and 529. `FaultServer` runs in a thread of this process (tests); `FaultServerProcess`
  runs it in a child process (benchmarks: no GIL shared with the client). Both expose `.base_url`
  and `.stats()` (requests by path, attempts by request text, Authorization headers seen).

* `managed_tiny_server()` / the `tiny_serve_role` fixture: a real `transformers serve` of the tiny
  kit model, started by the framework's own managed-server code, and a role config that points at
  it. The server is shared by the whole test process (it takes seconds to start) and stopped when the
  process exits. To use the fixture in a test module: `from tests.helpers.servers import tiny_serve_role`.

Run `python -m tests.helpers.servers --delay 0.1` to serve from a child process (prints `PORT <n>`).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

try:
    import pytest
except ImportError:  # the benchmarks use the servers without pytest
    pytest = None

_IDS = itertools.count(1)
FAULT = re.compile(r"\[\[fault:(\w+?)(?:x(\d+))?\]\]")
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable", 529: "Overloaded"}  # fmt: skip


def _request_text(path: str, body: dict) -> str:
    """The text the directives are read from: the prompt, or the messages joined."""
    if "prompt" in body:
        prompt = body["prompt"]
        return prompt if isinstance(prompt, str) else json.dumps(prompt)
    parts = []
    if isinstance(body.get("system"), str):
        parts.append(body["system"])
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):  # Anthropic content blocks
            content = " ".join(block.get("text", "") for block in content if isinstance(block, dict))
        parts.append(str(content))
    return "\n".join(parts)


def _last_text(body: dict) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content", "")
    if isinstance(content, list):
        content = " ".join(block.get("text", "") for block in content if isinstance(block, dict))
    return str(content)


class _FaultCore:
    """Request handling shared by the in-thread and child-process servers."""

    def __init__(self, delay_s: float = 0.0, hang_s: float = 30.0, retry_after: str = "1", responder=None,
                 record_bodies: bool = True):  # fmt: skip
        self.record_bodies = record_bodies
        self.delay_s = delay_s
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.responder = responder or (lambda path, body: "answer to: " + _FAULT_STRIP(_last_text(body)))
        self.lock = threading.Lock()
        self.by_path: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.attempt_times: defaultdict[str, list[float]] = defaultdict(list)
        self.auth_headers: list[str] = []
        self.bodies: list[dict] = []
        self.inflight = 0
        self.max_inflight = 0

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": sum(n for p, n in self.by_path.items() if p.startswith("/v1/") and p != "/v1/models"),
                "by_path": dict(self.by_path),
                "attempts": dict(self.attempts),
                "attempt_times": {k: list(v) for k, v in self.attempt_times.items()},
                "auth_headers": list(self.auth_headers),
                "bodies": list(self.bodies),
                "max_inflight": self.max_inflight,
            }

    async def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes):
        """-> (status, headers, body bytes) or None to hang up without answering."""
        if method == "GET" and path == "/health":
            return 200, {}, b'{"status":"ok"}'
        if method == "GET" and path == "/_stats":
            return 200, {}, json.dumps(self.stats()).encode()
        if method == "GET" and path == "/v1/models":
            return 200, {}, b'{"object":"list","data":[]}'
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):
            return 404, {}, b'{"error":{"message":"not found"}}'
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, {}, b'{"error":{"message":"request body is not JSON"}}'
        text = _request_text(path, body)
        with self.lock:
            self.by_path[path] += 1
            self.attempts[text] += 1
            attempt = self.attempts[text]
            self.attempt_times[text].append(time.monotonic())
            self.auth_headers.append(headers.get("authorization") or headers.get("x-api-key") or "")
            if self.record_bodies:
                self.bodies.append(body)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._answer_or_fault(path, body, text, attempt, headers)
        finally:
            with self.lock:
                self.inflight -= 1

    async def _answer_or_fault(self, path: str, body: dict, text: str, attempt: int, headers: dict[str, str]):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        fault = FAULT.search(text)
        if fault and (fault.group(2) is None or attempt <= int(fault.group(2))):
            kind = fault.group(1)
            if kind in ("429", "500", "503", "529"):
                extra = {"Retry-After": self.retry_after} if kind == "429" else {}
                kind_name = {"429": "rate_limit_error", "529": "overloaded_error"}.get(kind, "api_error")
                msg = {"type": "error", "error": {"type": kind_name, "message": f"injected {kind}"}}
                return int(kind), extra, json.dumps(msg).encode()
            if kind == "401":
                echoed = headers.get("authorization") or headers.get("x-api-key") or ""
                msg = {"type": "error", "error": {"type": "authentication_error", "message": f"bad key: {echoed}"}}
                return 401, {}, json.dumps(msg).encode()
            if kind == "hang":
                await asyncio.sleep(self.hang_s)
                return None
            if kind == "malformed":
                return 200, {}, b'{"id": "x", "choices": [{"message": {"content": "trunc'
            if kind == "empty":
                return 200, {}, json.dumps(self._answer(path, body, "")).encode()
            if kind == "length":
                return 200, {}, json.dumps(self._answer(path, body, self.responder(path, body), cut_off=True)).encode()
        return 200, {}, json.dumps(self._answer(path, body, self.responder(path, body))).encode()

    @staticmethod
    def _answer(path: str, body: dict, text: str, cut_off: bool = False) -> dict:
        model = body.get("model", "fake")
        prompt_tokens = max(1, len(_request_text(path, body).split()))
        completion_tokens = len(text.split())
        if path == "/v1/messages":
            return {
                "id": f"msg_{next(_IDS)}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}] if text else [],
                "stop_reason": "max_tokens" if cut_off else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
            }  # fmt: skip
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
        if path == "/v1/completions":
            choice = {"index": 0, "text": text, "finish_reason": "length" if cut_off else "stop", "logprobs": None}
            return {"id": f"cmpl-{next(_IDS)}", "object": "text_completion", "created": int(time.time()),
                    "model": model, "choices": [choice], "usage": usage}  # fmt: skip
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": "length" if cut_off else "stop"}
        return {"id": f"chatcmpl-{next(_IDS)}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [choice], "usage": usage}  # fmt: skip


def _FAULT_STRIP(text: str) -> str:  # noqa: N802 - reads like a constant transform
    return FAULT.sub("", text).strip()


async def _serve_connection(core: _FaultCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive, enough for httpx."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    key, value = line.split(":", 1)
                    headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            raw = await reader.readexactly(length) if length else b""
            answer = await core.handle(method, target.split("?", 1)[0], headers, raw)
            if answer is None:
                break
            status, extra, body = answer
            out = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "content-type: application/json",
                   f"content-length: {len(body)}", "connection: keep-alive"]  # fmt: skip
            out += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    except asyncio.CancelledError:  # server stopping; swallowed so that asyncio does not log it (3.11)
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class FaultServer:
    """The fault-injecting server in a background thread of this process (see the module doc)."""

    def __init__(self, delay_s: float = 0.0, hang_s: float = 30.0, retry_after: str = "1", responder=None):
        self.core = _FaultCore(delay_s, hang_s, retry_after, responder)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stats(self) -> dict[str, Any]:
        return self.core.stats()

    def role(self, **overrides: Any) -> dict[str, Any]:
        """A role config (plain dict) pointing at this server, with short timeouts for tests."""
        cfg = {"backend": "openai", "model": "fake-model", "base_url": self.base_url, "api_key_env": "",
               "max_concurrency": 8, "temperature": 0.0, "max_tokens": 32, "timeout_s": 5.0, "max_retries": 2,
               "backoff": {"initial_s": 0.01, "max_s": 0.05}}  # fmt: skip
        cfg.update(overrides)
        return cfg

    def start(self) -> FaultServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            server = loop.run_until_complete(
                asyncio.start_server(lambda r, w: _serve_connection(self.core, r, w), "127.0.0.1", 0)
            )
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="fault-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultServerProcess:
    """The same server in a child process (benchmarks), answered by its own CPU and GIL."""

    def __init__(self, delay_s: float = 0.0, hang_s: float = 30.0, retry_after: str = "1"):
        # Bodies are not kept: a benchmark sends many.
        self.args = ["--delay", str(delay_s), "--hang", str(hang_s), "--retry-after", retry_after, "--no-bodies"]
        self.port = 0
        self.proc: subprocess.Popen | None = None

    url = FaultServer.url
    base_url = FaultServer.base_url
    role = FaultServer.role

    def start(self) -> FaultServerProcess:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.servers", *self.args],
            cwd=root, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"fault server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stats(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(self.url + "/_stats", timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> FaultServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a real `transformers serve` of the tiny model, through the framework's managed-server code ---

_TINY_SERVER = None
_TINY_LOCK = threading.Lock()


def managed_tiny_server():
    """The process-wide managed `transformers serve` of kit:tiny (started on first use)."""
    global _TINY_SERVER
    with _TINY_LOCK:
        if _TINY_SERVER is None or not _TINY_SERVER.running:
            from safer_instruct.llm.servers import ManagedServer, ServerConfig
            from safer_instruct.model_kit import resolve_model

            server = ManagedServer("kit:tiny", resolve_model("kit:tiny"), ServerConfig(kind="transformers", device="cpu",
                                   startup_timeout_s=120))  # fmt: skip
            server.start()
            atexit.register(server.stop)  # if the session fixture never ran (a helper used outside pytest)
            _TINY_SERVER = server
        return _TINY_SERVER


def stop_managed_tiny_server() -> None:
    """Stop the shared server now (at the end of the test session, while logging can still write)."""
    with _TINY_LOCK:
        if _TINY_SERVER is not None:
            _TINY_SERVER.stop()


def tiny_role_config(**overrides: Any) -> dict[str, Any]:
    """A role config (plain dict) pointing at the shared tiny server; the model is the served folder."""
    server = managed_tiny_server()
    cfg = {"backend": "openai", "model": server.served_model, "base_url": server.base_url, "api_key_env": "",
           "max_concurrency": 4, "temperature": 0.0, "max_tokens": 16, "timeout_s": 60.0, "max_retries": 1,
           "backoff": {"initial_s": 0.1, "max_s": 1.0}, "hf_generation_config": "true"}  # fmt: skip
    cfg.update(overrides)
    return cfg


def _tiny_serve_role():
    """A role config (DictConfig) for a real `transformers serve` of kit:tiny on loopback."""
    from omegaconf import OmegaConf

    return OmegaConf.create(tiny_role_config())


if pytest is not None:
    tiny_serve_role = pytest.fixture(scope="session", name="tiny_serve_role")(_tiny_serve_role)


def _main() -> None:
    parser = argparse.ArgumentParser(description="fault-injecting OpenAI/Anthropic-compatible loopback server")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hang", type=float, default=30.0)
    parser.add_argument("--retry-after", default="1")
    parser.add_argument("--no-bodies", action="store_true", help="do not keep request bodies for /_stats")
    args = parser.parse_args()
    core = _FaultCore(args.delay, args.hang, args.retry_after, record_bodies=not args.no_bodies)

    async def serve() -> None:
        server = await asyncio.start_server(lambda r, w: _serve_connection(core, r, w), "127.0.0.1", 0)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        # Stop when the parent closes our stdin (or dies).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    _main()
