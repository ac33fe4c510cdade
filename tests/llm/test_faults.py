"""Faults a real server will not produce on demand, injected by the loopback FaultServer."""

from __future__ import annotations

import json
import logging

import pytest

from safer_instruct.errors import ConfigError
from safer_instruct.llm import ChatRequest, LLMSession
from tests.helpers.servers import FaultServer


def chat(rid: str, text: str, **kw) -> ChatRequest:
    return ChatRequest(id=rid, messages=({"role": "user", "content": text},), **kw)


@pytest.fixture()
def server():
    with FaultServer(hang_s=5.0, retry_after="1") as srv:
        yield srv


def read_failures(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_request_is_answered_or_listed_in_failures(server, tmp_path):
    good = [chat(f"ok{i}", f"question {i}") for i in range(12)]
    faulty = [
        chat("flaky500", "[[fault:500x2]] recovers after two 500s"),
        chat("always500", "[[fault:500]] never recovers"),
        chat("hang", "[[fault:hang]] hangs past the timeout"),
        chat("malformed", "[[fault:malformed]] body is not JSON"),
        chat("empty", "[[fault:empty]] empty content"),
        ChatRequest(id="raw", prompt="a raw prompt [[fault:503x1]]"),
    ]
    role = server.role(timeout_s=0.5, max_retries=2, max_concurrency=4)
    failures_path = tmp_path / "failures.jsonl"
    with LLMSession(roles={"expert": role}, cache_dir=tmp_path / "cache", failures_path=failures_path) as session:
        results = list(session.role("expert").generate(good + faulty, phase="filter"))
        stats = session.role("expert").stats("filter")

    by_id = {r.request_id: r for r in results}
    assert len(results) == len(good) + len(faulty) == len(by_id)  # one result per request, none lost
    assert all(by_id[r.id].ok and by_id[r.id].text == f"answer to: {r.messages[0]['content']}" for r in good)
    assert by_id["flaky500"].ok and by_id["raw"].ok  # retried into success
    failed = {r.request_id: r for r in results if not r.ok}
    assert set(failed) == {"always500", "hang", "malformed", "empty"}
    assert failed["always500"].reason.startswith("http 500") and failed["always500"].attempts == 3
    assert failed["hang"].reason.startswith("timeout") and failed["hang"].attempts == 3
    assert failed["malformed"].reason.startswith("malformed response") and failed["malformed"].attempts == 3
    assert failed["empty"].reason.startswith("empty completion") and failed["empty"].attempts == 1

    listed = {f["request_id"]: f for f in read_failures(failures_path)}
    assert set(listed) == set(failed)
    assert listed["hang"]["attempts"] == 3 and listed["hang"]["phase"] == "filter" and listed["hang"]["role"] == "expert"
    # retries: flaky500 2, always500 2, hang 2, malformed 2, raw 1 (empty is not retried)
    assert stats["retries"] == 9
    assert stats["failures"] == 4 and stats["requests"] == 18 and stats["cache_misses"] == 18
    attempts = server.stats()["attempts"]
    assert attempts["[[fault:500x2]] recovers after two 500s"] == 3
    assert attempts["[[fault:empty]] empty content"] == 1


def test_retry_after_is_honoured(server, tmp_path):
    # Backoff alone would retry after ~0.01 s; the server asks for 1 s.
    role = server.role(backoff={"initial_s": 0.01, "max_s": 0.02}, max_retries=1)
    with LLMSession(roles={"r": role}, cache_dir=tmp_path) as session:
        (result,) = session.role("r").generate([chat("a", "[[fault:429x1]] slow down")])
    assert result.ok
    times = server.stats()["attempt_times"]["[[fault:429x1]] slow down"]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.95


def test_rerun_makes_zero_requests_and_counts_hits(server, tmp_path):
    requests = [chat(f"q{i}", f"question {i}") for i in range(20)]
    requests += [chat(f"s{k}", "same question", sample_index=k) for k in range(3)]  # k samples: k entries
    role = server.role()
    with LLMSession(roles={"r": role}, cache_dir=tmp_path / "cache") as session:
        first = {r.request_id: r for r in session.role("r").generate(requests, phase="induce")}
    assert server.stats()["requests"] == 23
    with LLMSession(roles={"r": role}, cache_dir=tmp_path / "cache") as session:
        second = {r.request_id: r for r in session.role("r").generate(requests, phase="induce")}
        stats = session.role("r").stats("induce")
    assert server.stats()["requests"] == 23  # nothing new reached the server
    assert stats["cache_hits"] == 23 and stats["cache_misses"] == 0
    assert all(second[k].cached and second[k].text == first[k].text for k in first)
    # Another sampling parameter is another question: a miss.
    with LLMSession(roles={"r": server.role(max_tokens=7)}, cache_dir=tmp_path / "cache") as session:
        list(session.role("r").generate(requests[:2]))
    assert server.stats()["requests"] == 25


def test_failures_are_not_cached_and_are_retried_on_rerun(server, tmp_path):
    role = server.role(max_retries=0)
    request = chat("x", "[[fault:500x1]] fails once")
    with LLMSession(roles={"r": role}, cache_dir=tmp_path) as session:
        (first,) = session.role("r").generate([request])
    with LLMSession(roles={"r": role}, cache_dir=tmp_path) as session:
        (second,) = session.role("r").generate([request])
    assert not first.ok and second.ok and not second.cached


def test_concurrency_is_bounded_and_input_is_streamed(tmp_path):
    pulled = 0

    def requests():
        nonlocal pulled
        for i in range(400):
            pulled += 1
            yield chat(f"q{i}", f"question {i}")

    with FaultServer(delay_s=0.02) as server, LLMSession(roles={"r": server.role(max_concurrency=5)}) as session:
        stream = session.role("r").generate(requests())
        first = next(stream)
        pulled_at_first = pulled
        rest = list(stream)
    assert first.ok and len(rest) == 399
    assert server.stats()["max_inflight"] == 5
    # Only a bounded window (2 x concurrency plus one chunk) was read ahead of the first answer.
    assert pulled_at_first <= 2 * 5 + 64


def test_rate_limit_spaces_requests(tmp_path):
    with FaultServer() as server:
        with LLMSession(roles={"r": server.role(rpm=600, max_concurrency=8)}) as session:  # 10 per second
            list(session.role("r").generate([chat(f"q{i}", f"q {i}") for i in range(25)]))
        times = sorted(t for ts in server.stats()["attempt_times"].values() for t in ts)
    # A burst of one second's worth (10), then one every 0.1 s: the last starts >= 1.4 s after the first.
    assert times[-1] - times[0] >= 1.35


def test_api_key_from_env_never_reaches_failures_or_logs(server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-DO-NOT-LEAK-0123456789"
    monkeypatch.setenv("FAKE_LLM_KEY", secret)
    failures_path = tmp_path / "failures.jsonl"
    caplog.set_level(logging.DEBUG)
    role = server.role(api_key_env="FAKE_LLM_KEY")
    with LLMSession(roles={"r": role}, cache_dir=tmp_path, failures_path=failures_path) as session:
        results = {r.request_id: r for r in session.role("r").generate([chat("ok", "hi"), chat("leak", "[[fault:401]]")])}
    assert results["ok"].ok
    assert f"Bearer {secret}" in server.stats()["auth_headers"]  # the key was read from the env and sent
    assert not results["leak"].ok and results["leak"].reason.startswith("http 401")
    assert "bad key" in results["leak"].reason  # the server's message is kept, the key is not
    assert secret not in results["leak"].reason
    assert secret not in failures_path.read_text() and "<redacted>" in failures_path.read_text()
    assert secret not in caplog.text


def test_missing_api_key_is_a_config_error_before_sending(server, tmp_path, monkeypatch):
    monkeypatch.delenv("FAKE_LLM_KEY_ABSENT", raising=False)
    role = server.role(api_key_env="FAKE_LLM_KEY_ABSENT")
    with LLMSession(roles={"r": role}) as session, pytest.raises(ConfigError, match="FAKE_LLM_KEY_ABSENT"):
        list(session.role("r").generate([chat("a", "hi")]))
    assert server.stats()["requests"] == 0


def test_anthropic_backend_speaks_messages_api(server, tmp_path, monkeypatch):
    # A stand-in for api.anthropic.com (no network here): the fault server answers the Messages API.
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "anthropic-secret-key-123")
    role = server.role(backend="anthropic", model="claude-3-opus-20240229", base_url=server.url,
                       api_key_env="FAKE_ANTHROPIC_KEY", temperature=0.0)  # fmt: skip
    requests = [
        ChatRequest(id="sys", messages=({"role": "system", "content": "Be a judge."}, {"role": "user", "content": "rate"})),
        chat("overloaded", "[[fault:529x1]] busy"),
        chat("down", "[[fault:529]] always busy"),
        ChatRequest(id="raw", prompt="plain prompt"),
    ]
    failures_path = tmp_path / "failures.jsonl"
    with LLMSession(roles={"judge": role}, cache_dir=tmp_path, failures_path=failures_path) as session:
        results = {r.request_id: r for r in session.role("judge").generate(requests)}
        stats = session.role("judge").stats("default")
    assert results["sys"].ok and results["sys"].text == "answer to: rate"
    assert results["sys"].finish_reason == "end_turn" and results["sys"].usage.completion_tokens == 3
    assert results["overloaded"].ok and results["raw"].text == "answer to: plain prompt"
    assert not results["down"].ok and results["down"].reason.startswith("http 529")
    bodies = [b for b in server.stats()["bodies"] if b.get("system")]
    assert bodies and bodies[0]["system"] == "Be a judge." and bodies[0]["messages"] == [{"role": "user", "content": "rate"}]
    assert bodies[0]["temperature"] == 0.0 and bodies[0]["max_tokens"] == 32
    assert any("anthropic-secret-key-123" in h for h in server.stats()["auth_headers"])  # read from the env
    assert "anthropic-secret-key-123" not in failures_path.read_text()
    assert stats["cost_usd"] > 0  # claude-3-opus is in the price table


def test_progress_bar_shows_rate_cached_and_failed(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    requests = [chat(f"q{i}", f"question {i}") for i in range(6)] + [chat("bad", "[[fault:500]]")]
    with LLMSession(roles={"expert": server.role(max_retries=0)}, cache_dir=tmp_path) as session:
        list(session.role("expert").generate(requests[:3], phase="filter"))
        list(session.role("expert").generate(requests, phase="filter", progress=True))
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "expert/filter" in final and "7/7" in final and "req/s" in final
    assert "cached=3 failed=1" in final


def test_tokens_per_minute_limit_spaces_requests():
    import asyncio
    import time

    from safer_instruct.llm.limits import RateLimiter

    async def run() -> float:
        limiter = RateLimiter(rpm=None, tpm=6000)  # 100 tokens a second, bursts of 100
        started = time.monotonic()
        for _ in range(8):
            await limiter.acquire(25)
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    assert 0.9 <= elapsed < 3.0  # 4 fit in the burst, the other 4 wait 0.25 s each


def test_stopping_early_keeps_every_answer_that_arrived(tmp_path):
    import time

    requests = [chat(f"q{i}", f"question {i}") for i in range(40)]
    with FaultServer(delay_s=0.02) as server:
        with LLMSession(roles={"r": server.role(max_concurrency=8)}, cache_dir=tmp_path) as session:
            stream = session.role("r").generate(requests)
            next(stream)
            time.sleep(0.5)  # the requests in flight are answered while the caller is busy
            stream.close()  # ...and then it stops (break, Ctrl-C, an error in the stage)
        sent_first = server.stats()["requests"]
        assert 1 < sent_first < 40
        with LLMSession(roles={"r": server.role(max_concurrency=8)}, cache_dir=tmp_path) as session:
            results = list(session.role("r").generate(requests))
            hits = session.role("r").stats("default")["cache_hits"]
        assert all(r.ok for r in results) and len(results) == 40
        assert hits == sent_first  # every answer of the first run was kept
        assert server.stats()["requests"] == 40  # so nothing was asked twice


def test_one_cache_file_shared_by_concurrent_sessions(tmp_path):
    import threading

    batches = [[chat(f"{t}-{i}", f"thread {t} question {i}") for i in range(60)] for t in range(3)]
    errors: list[BaseException] = []

    def run(batch) -> None:
        try:  # each thread its own session over one cache file, as separate processes would
            with LLMSession(roles={"r": server.role(max_concurrency=6)}, cache_dir=tmp_path) as session:
                assert all(r.ok for r in session.role("r").generate(batch))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    with FaultServer(delay_s=0.005) as server:
        threads = [threading.Thread(target=run, args=(batch,)) for batch in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        with LLMSession(roles={"r": server.role()}, cache_dir=tmp_path) as session:
            again = list(session.role("r").generate([r for batch in batches for r in batch]))
        assert server.stats()["requests"] == 180 and all(r.cached for r in again) and len(again) == 180
