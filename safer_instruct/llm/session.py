"""`LLMSession` and `LLMRole`: the one way every stage asks a language model something.

    with LLMSession(roles={"expert": cfg.expert}, cache_dir=cfg.cache.dir,
                    failures_path=out_dir / "failures.jsonl", budget_usd=cfg.llm.budget_usd) as session:
        for result in session.role("expert").generate(requests, phase="filter_instructions"):
            ...  # Completion or Failure, in completion order; match by result.request_id

`phase` names the part of the caller's work that a role's counters and failures are filed under: a
construct phase (induce, filter_instructions, ...) or a part of an eval (generate_answers, judge).

How a request travels: the caller's thread pulls requests from the iterable a chunk at a time,
answers what the cache holds at once, reserves the worst-case cost against the budget, and hands the
rest to an asyncio loop in a background thread, never more than `2 * max_concurrency` at a time (so
memory does not grow with the corpus). In the loop a semaphore bounds concurrency, a token bucket
enforces `rpm`/`tpm`, and tenacity retries 429/5xx/timeouts/connection errors/malformed answers with
exponential backoff and jitter, or as long as the server's Retry-After asks. Answers are cached;
requests that still fail are yielded as `Failure`s and appended to the failures file. A request's
prefill is sent the backend's way, or left out (and said once) where it cannot be (`LLMRole.as_sent`);
an answer to a prefilled request is the prefill plus what the model wrote. Nothing raises
for a per-request problem; a problem of the whole role (a missing API key, a server that will not
start) raises a `SaferInstructError` before anything is sent.

A dry run (`LLMSession(..., dry_run=True)`) runs a stage's own code through this same path up to the
point of sending: cache hits are answered as always (free); every miss is counted instead (`LLMRole.
estimate`: prompt tokens at ~4 characters a token, `max_tokens` completion tokens, cost from the price
table) and answered with a placeholder (`is_placeholder`) of `max_tokens` length, so that the stage
goes on without a backend, a server, weights, the budget or the failures file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError
from safer_instruct.identity import model_identity
from safer_instruct.llm.backends import Backend, backend_class
from safer_instruct.llm.cache import AnswerCache, cache_key
from safer_instruct.llm.config import Price, RoleConfig, parse_role, price_for
from safer_instruct.llm.estimate import NOT_SENT, stand_in_text
from safer_instruct.llm.faults import BackoffWait, Transient, describe, is_retryable, redact
from safer_instruct.llm.limits import (
    CONSERVATIVE_CHARS_PER_TOKEN,
    Budget,
    RateLimiter,
    estimate_prompt_tokens,
)
from safer_instruct.llm.types import ChatRequest, Completion, Failure, Result, Usage

log = logging.getLogger(__name__)

CHUNK = 64  # requests pulled from the input (and looked up in the cache) at a time
BUDGET_REASON = "budget: not sent, budget_usd would be exceeded"
STAT_KEYS = ("requests", "cache_hits", "cache_misses", "failures", "retries", "budget_skipped",
             "prompt_tokens", "completion_tokens", "cost_usd", "elapsed_s")  # fmt: skip
# What a dry run counts for the requests it would send (the cache misses).
DRY_RUN_KEYS = ("to_send", "est_prompt_tokens", "est_completion_tokens")


class LLMSession:
    """Roles and their backends, the answer cache, the failures file, the budget, and what roles share
    (`shared`: e.g. one managed server for every role of the same model), closed with the session."""

    def __init__(
        self,
        roles: Mapping[str, Any],
        cache_dir: str | Path | None = None,
        failures_path: str | Path | None = None,
        budget_usd: float | None = None,
        progress: bool = True,
        dry_run: bool = False,
    ):
        self.dry_run = dry_run  # count and answer with placeholders instead of sending (module docstring)
        self.roles_config: dict[str, RoleConfig] = {}
        # A role that is configured but unusable (e.g. `policy.model` empty when answers are pre-generated)
        # is an error only when a stage asks for it.
        self._invalid: dict[str, ConfigError] = {}
        for name, node in roles.items():
            try:
                self.roles_config[name] = node if isinstance(node, RoleConfig) else parse_role(name, node)
            except ConfigError as err:
                self._invalid[name] = err
        self.cache = AnswerCache(cache_dir) if cache_dir else None
        self.failures_path = Path(failures_path) if failures_path else None
        if budget_usd is not None and float(budget_usd) < 0:
            raise ConfigError(f"budget_usd must be >= 0 or null, got {budget_usd}")
        self.budget = Budget(float(budget_usd) if budget_usd is not None else None)
        self.progress = progress
        self.log_dir = self.failures_path.parent if self.failures_path else None  # managed servers' logs
        self.prices: dict[str, Price | None] = {name: price_for(cfg) for name, cfg in self.roles_config.items()}
        for name in [name for name, price in self.prices.items() if price is None]:
            model = self.roles_config[name].model
            if self.budget.limit_usd is not None:
                raise ConfigError(
                    f"role '{name}': no price for model '{model}' in conf/llm/prices.yaml, so budget_usd "
                    f"cannot be enforced: set {name}.price.input_per_mtok and {name}.price.output_per_mtok"
                )
            log.warning("role '%s': no price known for model '%s'; its cost is reported as 0", name, model)
        for noisy in ("httpx", "httpx2"):
            # The SDKs' HTTP clients log every request at INFO; Hydra's job logging shows INFO.
            if logging.getLogger(noisy).level == logging.NOTSET:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        self._roles: dict[str, LLMRole] = {}
        self._shared: dict[tuple, Any] = {}
        self._lock = threading.RLock()
        self._failures_file = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._old_sigterm = None
        self.closed = False

    # --- lifecycle ---
    def __enter__(self) -> LLMSession:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # SIGTERM (Slurm preemption, `kill`) would end us without cleanup and orphan the servers.
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_system_exit)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
                if not self._loop.is_running():
                    self._loop.close()
        finally:
            for resource in reversed(self._shared.values()):
                resource.close()
            if self.cache is not None:
                self.cache.close()
            if self._failures_file is not None:
                self._failures_file.close()
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    async def _shutdown(self) -> None:
        """Cancel requests still in flight (a stage stopped early), then close the clients."""
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for role in self._roles.values():
            if role.backend is not None:
                with contextlib.suppress(Exception):
                    await role.backend.aclose()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.closed:
                raise RuntimeError("the LLM session is closed")
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="llm-session", daemon=True)
                self._thread.start()
            return self._loop

    # --- roles and what they share ---
    def role(self, name: str) -> LLMRole:
        with self._lock:
            if name not in self._roles:
                if name in self._invalid:
                    raise self._invalid[name]
                if name not in self.roles_config:
                    raise ConfigError(f"no LLM role '{name}' in this session (roles: {', '.join(self.roles_config)})")
                self._roles[name] = LLMRole(self, self.roles_config[name], self.prices[name])
            return self._roles[name]

    def shared(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The object `key` names, made by `make()` on first use and shared by every role of this
        session (a backend's managed server); it is closed (`close()`) when the session closes."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = make()
            return self._shared[key]

    @property
    def resources(self) -> list[Any]:
        """What the roles share so far (e.g. the managed servers started), in the order it was made."""
        return list(self._shared.values())

    def secrets(self) -> list[str]:
        return [os.environ[c.api_key_env] for c in self.roles_config.values() if os.environ.get(c.api_key_env or "")]

    def record_failure(self, failure: Failure, role: str, phase: str) -> None:
        if self.failures_path is None:
            return
        record = {
            "request_id": failure.request_id, "role": role, "phase": phase, "model": failure.model,
            "reason": failure.reason, "attempts": failure.attempts,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "metadata": failure.metadata,
        }  # fmt: skip
        with self._lock:
            if self._failures_file is None:
                self.failures_path.parent.mkdir(parents=True, exist_ok=True)
                self._failures_file = open(self.failures_path, "a", encoding="utf-8")  # noqa: SIM115
            line = redact(json.dumps(record, ensure_ascii=False, default=str), self.secrets())
            self._failures_file.write(line + "\n")
            self._failures_file.flush()

    @property
    def budget_exhausted(self) -> bool:
        return self.budget.exhausted


def _raise_system_exit(signum, frame) -> None:  # noqa: ARG001
    raise SystemExit(128 + signum)


@dataclasses.dataclass
class _Pending:
    request: ChatRequest
    key: str
    reserved_usd: float


class LLMRole:
    """One configured role (its backend, limits and counters) inside a session."""

    def __init__(self, session: LLMSession, cfg: RoleConfig, price: Price | None):
        self.session = session
        self.cfg = cfg
        self.name = cfg.name
        self.price = price
        self.backend: Backend | None = None
        self._transient: Transient = {}
        self._warned_prefill = False
        self._stats: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._semaphore = asyncio.Semaphore(cfg.max_concurrency)
        self._limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self._wait = BackoffWait(cfg.backoff.initial_s, cfg.backoff.max_s, cfg.backoff.max_retry_after_s)

    # --- identity, parameters, keys ---
    @functools.cached_property
    def identity(self) -> str:
        """The model's name in cache keys: a content hash of local weights (`model_identity`)."""
        return model_identity(self.cfg.model)

    def params(self, request: ChatRequest) -> dict[str, Any]:
        """The sampling parameters a request is sent (and cached) with."""
        cfg = self.cfg
        return {
            "temperature": float(request.temperature if request.temperature is not None else cfg.temperature),
            "max_tokens": int(request.max_tokens if request.max_tokens is not None else cfg.max_tokens),
            "top_p": cfg.top_p,
            "stop": list(request.stop) if request.stop else (list(cfg.stop) if cfg.stop else None),
            "seed": cfg.seed + request.sample_index if cfg.seed is not None else None,
        }

    def as_sent(self, request: ChatRequest) -> ChatRequest:
        """The request as this role sends (and caches) it: without its prefill when the backend
        cannot continue one (`cfg.prefill_support == "none"`), said once per role in the log."""
        if request.prefill is None or self.cfg.prefill_support != "none":
            return request
        if not self._warned_prefill:
            self._warned_prefill = True
            if self.cfg.prefill == "off":
                log.info("role '%s': prefill is off; requests are sent without their prefill", self.name)
            else:
                log.warning("role '%s': %s is a remote model without local weights, so its chat template is "
                            "unknown and prefills (e.g. verdict_prefill) are not sent; set %s.prefill=off to "
                            "silence this", self.name, self.cfg.model, self.name)  # fmt: skip
        return dataclasses.replace(request, prefill=None)

    def _counters(self, phase: str) -> dict[str, Any]:
        if phase not in self._stats:
            keys = STAT_KEYS + (DRY_RUN_KEYS if self.session.dry_run else ())
            self._stats[phase] = {**dict.fromkeys(keys, 0), "cost_usd": 0.0, "elapsed_s": 0.0}
        return self._stats[phase]

    def stats(self, phase: str = "default") -> dict[str, Any]:
        """The counters of one phase (a copy)."""
        with self._lock:
            return dict(self._counters(phase))

    # --- the backend, made ready on the first request that needs sending ---
    def ready(self) -> Backend:
        with self._lock:
            if self.backend is None:
                backend = backend_class(self.cfg.backend)(self.cfg, self.session)
                backend.prepare()
                self._transient = backend.transient_errors()  # what its retries and failure reasons know
                self.backend = backend
            return self.backend

    # --- dry run ---
    def estimate(self, phase: str = "default") -> dict[str, Any]:
        """What the requests of `phase` made so far in a dry run would send and cost (completion
        tokens: `max_tokens`, an upper bound; prompt tokens: ~4 characters a token)."""
        with self._lock:
            counters = self._counters(phase)
            counts = {"requests": counters["requests"], "cached": counters["cache_hits"],
                      **{key: counters.get(key, 0) for key in DRY_RUN_KEYS}}  # fmt: skip
        cost = self.price.cost(counts["est_prompt_tokens"], counts["est_completion_tokens"]) if self.price else None
        return {"role": self.name, "model": self.cfg.model, **counts, "est_cost_usd": cost,
                "price_known": self.price is not None}  # fmt: skip

    def _placeholder(self, request: ChatRequest, params: dict[str, Any], counters: dict[str, Any]) -> Completion:
        """Count a request a dry run would send and answer it with `max_tokens` of stand-in text."""
        prompt_tokens = estimate_prompt_tokens(request)
        with self._lock:
            counters["to_send"] += 1
            counters["est_prompt_tokens"] += prompt_tokens
            counters["est_completion_tokens"] += params["max_tokens"]
        return Completion(request_id=request.id, text=(request.prefill or "") + stand_in_text(params["max_tokens"]),
                          model=self.cfg.model, finish_reason=NOT_SENT, usage=Usage(prompt_tokens, params["max_tokens"]),
                          metadata=request.metadata)  # fmt: skip

    # --- the hot path ---
    def generate(self, requests: Iterable[ChatRequest], phase: str = "default", progress: bool | None = None,
                 ) -> Iterator[Result]:  # fmt: skip
        """Yield one Completion or Failure per request, in completion order (match by `request_id`)."""
        session = self.session
        counters = self._counters(phase)
        total = len(requests) if hasattr(requests, "__len__") else None  # type: ignore[arg-type]
        bar = _progress_bar(f"{self.name}/{phase}", total, session.progress if progress is None else progress)
        window = max(2, 2 * self.cfg.max_concurrency)
        lookups = self._lookups(requests, counters)
        inflight: dict[concurrent.futures.Future, _Pending] = {}
        done: queue.SimpleQueue = queue.SimpleQueue()
        exhausted = warned_budget = False
        started = time.perf_counter()

        def count(result: Result, hit: bool = False) -> Result:
            with self._lock:
                if hit:
                    counters["cache_hits"] += 1
                elif not result.ok:
                    counters["failures"] += 1
            bar.update(1)
            if not bar.disable:  # tqdm draws it at its own interval
                bar.set_postfix_str(f"cached={counters['cache_hits']} failed={counters['failures']}", refresh=False)
            return result

        try:
            while True:
                while not exhausted and len(inflight) < window:
                    request, params, key, hit = next(lookups, (None, None, None, None))
                    if request is None:
                        exhausted = True
                    elif hit is not None:
                        cached = dataclasses.replace(hit, request_id=request.id, metadata=request.metadata)
                        yield count(cached, hit=True)
                    elif session.dry_run:
                        yield count(self._placeholder(request, params, counters))
                    else:
                        backend = self.ready()
                        reserved = self._worst_case_cost(request, params)
                        if session.budget.try_reserve(reserved):
                            call = self._call(backend, request, params)
                            future = asyncio.run_coroutine_threadsafe(call, session.loop())
                            inflight[future] = _Pending(request, key, reserved)
                            future.add_done_callback(done.put)
                            continue
                        if not warned_budget:
                            log.warning("%s/%s: budget_usd=%s reached (spent %.4f USD): requests not sent are "
                                        "listed in the failures file", self.name, phase, session.budget.limit_usd,
                                        session.budget.spent_usd)  # fmt: skip
                            warned_budget = True
                        failure = Failure(request.id, BUDGET_REASON, self.cfg.model, 0, request.metadata)
                        with self._lock:
                            counters["budget_skipped"] += 1
                        session.record_failure(failure, self.name, phase)
                        yield count(failure)
                if not inflight:  # every request answered
                    break
                future = _get(done)
                yield count(self._finish(future, inflight.pop(future), phase, counters))
        finally:
            # Stopped early (the caller broke off, or an error): answers that already arrived are kept
            # (cached, or listed as failures), the rest is cancelled. Nothing paid for is thrown away.
            for future, pending in inflight.items():
                if future.done() and not future.cancelled():
                    self._finish(future, pending, phase, counters)
                else:
                    future.cancel()
                    session.budget.settle(pending.reserved_usd, 0.0)
            if session.cache is not None:
                session.cache.flush()
            with self._lock:
                counters["elapsed_s"] += time.perf_counter() - started
            bar.set_postfix_str(f"cached={counters['cache_hits']} failed={counters['failures']}", refresh=True)
            bar.close()
            if counters["requests"]:
                log.info("%s/%s: %d requests, %d cached, %d failed, %d retries, %.4f USD", self.name, phase,
                         counters["requests"], counters["cache_hits"], counters["failures"], counters["retries"],
                         counters["cost_usd"])  # fmt: skip

    def _lookups(self, requests: Iterable[ChatRequest], counters: dict[str, Any]) -> Iterator[tuple]:
        """(request as sent, its params, its cache key, its cached answer or None) for each request,
        pulled from `requests` and looked up in the cache a chunk at a time."""
        iterator, cache = iter(requests), self.session.cache
        while chunk := [self.as_sent(request) for request in islice(iterator, CHUNK)]:
            keyed = [(request, self.params(request)) for request in chunk]
            keys = [cache_key(self.identity, request, params) for request, params in keyed]
            hits = cache.get_many(keys) if cache else {}
            with self._lock:
                counters["requests"] += len(chunk)
                counters["cache_misses"] += sum(1 for key in keys if key not in hits)
            for (request, params), key in zip(keyed, keys, strict=True):
                yield request, params, key, hits.get(key)

    def _worst_case_cost(self, request: ChatRequest, params: dict[str, Any]) -> float:
        if not self.price:
            return 0.0
        prompt = estimate_prompt_tokens(request, CONSERVATIVE_CHARS_PER_TOKEN)
        return self.price.cost(prompt, params["max_tokens"])

    def _finish(self, future: concurrent.futures.Future, pending: _Pending, phase: str, counters: dict) -> Result:
        request = pending.request
        try:
            result, attempts = future.result()
        except BaseException as err:  # noqa: BLE001 - cancelled or a bug: still one answer per request
            reason = redact(describe(err, self._transient), self.session.secrets())
            result, attempts = Failure(request.id, reason, self.cfg.model, 0, request.metadata), 0
        cost = self.price.cost(result.usage.prompt_tokens, result.usage.completion_tokens) if (
            result.ok and self.price) else 0.0  # fmt: skip
        self.session.budget.settle(pending.reserved_usd, cost)
        with self._lock:
            counters["retries"] += max(0, attempts - 1)
            if result.ok:
                counters["prompt_tokens"] += result.usage.prompt_tokens
                counters["completion_tokens"] += result.usage.completion_tokens
                counters["cost_usd"] += cost
        if result.ok:
            if self.session.cache is not None:
                self.session.cache.put(pending.key, result)
        else:
            self.session.record_failure(result, self.name, phase)
        return result

    async def _call(self, backend, request: ChatRequest, params: dict[str, Any]) -> tuple[Result, int]:
        """One request with retries; never raises (a Failure carries the reason)."""
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        attempts = 0
        estimated = estimate_prompt_tokens(request) + params["max_tokens"]
        transient = self._transient
        async with self._semaphore:
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.cfg.max_retries + 1), wait=self._wait,
                    retry=retry_if_exception(lambda err: is_retryable(err, transient)), reraise=True,
                ):  # fmt: skip
                    with attempt:
                        attempts += 1
                        await self._limiter.acquire(estimated)
                        started = time.perf_counter()
                        answer = await backend.complete(request, params)
            except Exception as err:  # noqa: BLE001 - every problem becomes a recorded Failure
                reason = redact(describe(err, transient), self.session.secrets())
                return Failure(request.id, reason, self.cfg.model, attempts, request.metadata), attempts
        usage = answer.usage
        if usage is None:  # the server did not count: estimate, so that cost and limits still work
            usage = Usage(estimate_prompt_tokens(request), max(1, len(answer.text) // 4))
        self._limiter.settle(estimated, usage.total_tokens)
        completion = Completion(
            # The whole answer: the model continued the prefill, so the text starts with it.
            request_id=request.id, text=(request.prefill or "") + answer.text, model=answer.model,
            finish_reason=answer.finish_reason,
            usage=usage, latency_s=time.perf_counter() - started, cached=False, metadata=request.metadata,
        )  # fmt: skip
        return completion, attempts


def _get(done: queue.SimpleQueue):
    # A timeout keeps the wait interruptible (Ctrl-C, SIGTERM) on every platform.
    while True:
        try:
            return done.get(timeout=0.5)
        except queue.Empty:
            continue


def _progress_bar(desc: str, total: int | None, enabled: bool):
    """tqdm: rate and ETA (with a known total); cached and failed counts in the postfix. A disabled
    bar does nothing. `TQDM_DISABLE=1` turns every bar off (tests, CI logs)."""
    from tqdm.auto import tqdm

    disabled = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(total=total, desc=desc, unit="req", mininterval=0.5, file=sys.stderr, dynamic_ncols=True,
                disable=disabled)  # fmt: skip
