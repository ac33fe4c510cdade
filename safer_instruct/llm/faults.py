"""What went wrong with a request: retry or not, how long to wait, and a reason safe to write down."""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import time
from collections.abc import Iterable, Mapping

from tenacity import wait_exponential_jitter

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
# Secret-looking strings redacted from every reason even when we do not know the value (a server may
# echo a key we never had, e.g. one from a proxy).
_SECRET_PATTERNS = (
    (re.compile(r"(?i)(bearer\s+)[^\s'\",}]+"), r"\1<redacted>"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "<redacted>"),
    (re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1<redacted>"),
)


class MalformedResponse(Exception):
    """The server answered, but not with a usable completion object (retried: often transient)."""


class EmptyCompletion(Exception):
    """The completion has no text (not retried: with the same input it tends to happen again)."""


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


# A backend adds its SDK's own classes of these kinds (`Backend.transient_errors`).
TRANSIENT_KINDS = {"timeout": (TimeoutError,), "connection error": (ConnectionError,)}
Transient = Mapping[str, tuple[type[BaseException], ...]]


def transient_kind(exc: BaseException, transient: Transient | None = None) -> str | None:
    """`timeout` or `connection error` when `exc` is one (Python's own, or a backend's `transient`)."""
    for kind, generic in TRANSIENT_KINDS.items():
        if isinstance(exc, generic + tuple((transient or {}).get(kind, ()))):
            return kind
    return None


def is_retryable(exc: BaseException, transient: Transient | None = None) -> bool:
    """429, 5xx, timeouts, connection errors and malformed answers are worth another try."""
    import httpx

    if isinstance(exc, (MalformedResponse, json.JSONDecodeError)):
        return True
    if isinstance(exc, EmptyCompletion):
        return False
    if isinstance(exc, httpx.TransportError) or transient_kind(exc, transient):  # timeouts included
        return True
    status = status_of(exc)
    return status in RETRYABLE_STATUS if status is not None else False


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` seconds or HTTP date)."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    with contextlib.suppress(TypeError, ValueError):  # absent or not a number: try Retry-After
        return max(0.0, float(headers.get("retry-after-ms")) / 1000.0)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())


class BackoffWait(wait_exponential_jitter):
    """A tenacity wait: the server's Retry-After when given (capped), else tenacity's exponential
    backoff (`initial_s * 2**(attempt - 1)`, at most `max_s`) plus up to `initial_s` of jitter."""

    def __init__(self, initial_s: float, max_s: float, max_retry_after_s: float):
        super().__init__(multiplier=initial_s, max=max_s, jitter=initial_s)
        self.max_retry_after_s = max_retry_after_s

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_s(exc) if exc is not None else None
        return min(asked, self.max_retry_after_s) if asked is not None else super().__call__(retry_state)


def describe(exc: BaseException, transient: Transient | None = None) -> str:
    """A one-line reason for the failures file (the caller redacts it)."""
    status = status_of(exc)
    if kind := transient_kind(exc, transient):
        pass
    elif isinstance(exc, (MalformedResponse, json.JSONDecodeError)):
        kind = "malformed response"
    elif isinstance(exc, EmptyCompletion):
        kind = "empty completion"
    elif status is not None:
        kind = f"http {status}"
    else:
        kind = type(exc).__name__
    detail = " ".join(str(exc).split())[:300]
    return f"{kind}: {detail}" if detail and detail != kind else kind


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secret values and anything that looks like a key removed."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
