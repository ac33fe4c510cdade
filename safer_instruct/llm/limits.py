"""Throughput limits (requests and tokens per minute) and the spending budget."""

from __future__ import annotations

import asyncio
import math
import threading
import time

from safer_instruct.llm.types import ChatRequest

# Rough tokens per character for estimates made before a request is sent. Dry-run estimates use the
# typical value; the budget reserves with the conservative one so that it stops *before* exceeding.
TYPICAL_CHARS_PER_TOKEN = 4.0
CONSERVATIVE_CHARS_PER_TOKEN = 2.5
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_prompt_tokens(request: ChatRequest, chars_per_token: float = TYPICAL_CHARS_PER_TOKEN) -> int:
    prefill = len(request.prefill or "")
    if request.prompt is not None:
        return math.ceil((len(request.prompt) + prefill) / chars_per_token)
    chars = sum(len(m.get("content") or "") for m in request.messages) + prefill
    return math.ceil(chars / chars_per_token) + MESSAGE_OVERHEAD_TOKENS * len(request.messages)


class TokenBucket:
    """An async token bucket with debt: the average rate is exact, bursts hold one second's worth.

    A caller may take more than the bucket holds (a long prompt against a tokens-per-minute limit);
    the level then goes negative and later callers wait until it is paid back.
    """

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        need = min(amount, self.capacity)
        while True:
            self._refill()
            if self.level >= need:
                self.level -= amount
                return
            await asyncio.sleep((need - self.level) / self.rate)

    def adjust(self, amount: float) -> None:
        """Charge (positive) or refund (negative) after the real usage is known."""
        self._refill()
        self.level -= amount


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits of one role (either may be off)."""

    def __init__(self, rpm: float | None, tpm: float | None):
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None

    async def acquire(self, estimated_tokens: int) -> None:
        if self.requests:
            await self.requests.take(1)
        if self.tokens:
            await self.tokens.take(estimated_tokens)

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tokens:
            self.tokens.adjust(actual_tokens - estimated_tokens)


class Budget:
    """A spending cap in US dollars shared by every role of a session.

    Each request reserves its worst case (conservative prompt estimate plus `max_tokens` of output)
    before it is sent; when the reservation would cross the cap the request is not sent. The real
    cost replaces the reservation when the answer arrives.
    """

    def __init__(self, limit_usd: float | None):
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.exhausted = False
        self._lock = threading.Lock()

    def try_reserve(self, amount: float) -> bool:
        with self._lock:
            if self.limit_usd is None or amount <= 0:
                return True
            if self.spent_usd + self.reserved_usd + amount > self.limit_usd:
                self.exhausted = True
                return False
            self.reserved_usd += amount
            return True

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved)  # nothing was reserved: stays 0
            self.spent_usd += actual
