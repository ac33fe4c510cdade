"""The persistent answer cache: sqlite in WAL mode, one connection per thread.

Keyed by a hash of (model identity, messages or prompt, prefill, sampling parameters, sample index), so a
rerun or a resumed run sends no request whose answer is stored, and k samples of one prompt are k
entries. Only successful answers are stored: a failed request is tried again next time.

Several threads and several processes (two stages, Slurm array tasks on shared storage) may use one
file at once: sqlite's WAL journal and a busy timeout make that safe.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from safer_instruct.identity import digest
from safer_instruct.llm.types import ChatRequest, Completion, Usage

CACHE_FILE = "answers.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""
# sqlite limits the number of host parameters in one statement (999 in old builds).
_LOOKUP_CHUNK = 500
COMMIT_EVERY = 64
COMMIT_INTERVAL_S = 1.0


def cache_key(model_identity: str, request: ChatRequest, params: dict) -> str:
    """A stable key for one request: the model, the input (prefill included), the sampling parameters,
    the sample index."""
    payload = {
        "model": model_identity,
        "messages": [[m.get("role"), m.get("content")] for m in request.messages] if request.messages else None,
        "prompt": request.prompt,
        "params": params,
        "sample_index": request.sample_index,
    }
    if request.prefill is not None:  # only when set: keys of requests without one stay as they were
        payload["prefill"] = request.prefill
    return digest(payload)


class AnswerCache:
    """Completions by cache key, in `<dir>/answers.sqlite`."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._connect()  # create the schema now, so that errors surface at session start

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread off only so that close() can run from any thread; each
            # connection is otherwise used by the thread that made it.
            conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.commit()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """Stored answers among `keys` (request_id left empty: the caller fills it in)."""
        conn = self._connect()
        found: dict[str, Completion] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT key, model, text, finish_reason, prompt_tokens, completion_tokens "  # noqa: S608
                f"FROM answers WHERE key IN ({marks})",
                chunk,
            ).fetchall()  # one C loop: faster than iterating the cursor
            for key, model, text, finish, p_tok, c_tok in rows:
                found[key] = Completion(
                    request_id="", text=text, model=model, finish_reason=finish,
                    usage=Usage(p_tok, c_tok), latency_s=0.0, cached=True,
                )  # fmt: skip
        return found

    def put(self, key: str, completion: Completion) -> None:
        """Store an answer. Commits are grouped (every `COMMIT_EVERY` answers or `COMMIT_INTERVAL_S`):
        a commit per answer costs more than the request on a fast server. `flush()` commits the rest;
        a crash loses at most one group, which the next run asks again."""
        conn = self._connect()
        conn.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key, completion.model, completion.text, completion.finish_reason,
                completion.usage.prompt_tokens, completion.usage.completion_tokens, time.time(),
            ),
        )  # fmt: skip
        self._local.uncommitted = getattr(self._local, "uncommitted", 0) + 1
        since_commit = time.monotonic() - getattr(self._local, "committed_at", 0.0)
        if self._local.uncommitted >= COMMIT_EVERY or since_commit > COMMIT_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Commit this thread's pending answers."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "uncommitted", 0):
            conn.commit()
        self._local.uncommitted = 0
        self._local.committed_at = time.monotonic()

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
        self.flush()
        for conn in conns:
            conn.commit()  # answers put by other threads that did not flush
            conn.close()
        self._local = threading.local()
