"""Cost accounting, the spending cap and the dry-run estimate (against the loopback FaultServer)."""

from __future__ import annotations

import json
import math

import pytest

from safer_instruct.errors import ConfigError
from safer_instruct.llm import ChatRequest, LLMSession
from safer_instruct.llm.estimate import is_placeholder
from safer_instruct.llm.session import BUDGET_REASON
from tests.helpers.servers import FaultServer

# One US dollar per completion token and nothing for the prompt: easy arithmetic.
PRICE = {"input_per_mtok": 0.0, "output_per_mtok": 1_000_000.0}


def chat(rid: str, text: str, **kw) -> ChatRequest:
    return ChatRequest(id=rid, messages=({"role": "user", "content": text},), **kw)


@pytest.fixture()
def server():
    with FaultServer() as srv:
        yield srv


def test_budget_stops_new_requests_before_it_is_exceeded(server, tmp_path):
    # Each answer is "answer to: question N" = 4 completion tokens = $4; each request reserves its
    # worst case, max_tokens=4 -> $4. With $10.50, two requests fit and a third would not.
    role = server.role(price=PRICE, max_tokens=4, max_concurrency=8)
    requests = [chat(f"q{i}", f"question {i}") for i in range(10)]
    failures_path = tmp_path / "failures.jsonl"
    with LLMSession(roles={"expert": role}, cache_dir=tmp_path / "cache", failures_path=failures_path,
                    budget_usd=10.5) as session:  # fmt: skip
        results = list(session.role("expert").generate(requests, phase="respond"))
        stats = session.role("expert").stats("respond")
        spent = session.budget.spent_usd
        assert session.budget_exhausted
    assert server.stats()["requests"] == 2
    answered = [r for r in results if r.ok]
    skipped = [r for r in results if not r.ok]
    assert len(answered) == 2 and len(skipped) == 8 and len(results) == 10  # every request accounted for
    assert all(r.reason == BUDGET_REASON and r.attempts == 0 for r in skipped)
    assert spent == pytest.approx(8.0) and spent <= 10.5
    assert stats["cost_usd"] == pytest.approx(8.0) and stats["completion_tokens"] == 8
    assert stats["budget_skipped"] == 8 and stats["failures"] == 8
    listed = [json.loads(line) for line in failures_path.read_text().splitlines()]
    assert sorted(f["request_id"] for f in listed) == sorted(r.request_id for r in skipped)

    # Work done is kept: a later run with more budget pays only for what is missing.
    with LLMSession(roles={"expert": role}, cache_dir=tmp_path / "cache", budget_usd=100) as session:
        rerun = list(session.role("expert").generate(requests, phase="respond"))
        assert session.budget.spent_usd == pytest.approx(32.0)
    assert all(r.ok for r in rerun) and sum(r.cached for r in rerun) == 2
    assert server.stats()["requests"] == 10


def test_cached_answers_are_free_after_the_budget_is_spent(server, tmp_path):
    role = server.role(price=PRICE, max_tokens=4)
    requests = [chat(f"q{i}", f"question {i}") for i in range(3)]
    with LLMSession(roles={"r": role}, cache_dir=tmp_path) as session:
        list(session.role("r").generate(requests))
    with LLMSession(roles={"r": role}, cache_dir=tmp_path, budget_usd=0.0) as session:
        results = list(session.role("r").generate(requests + [chat("new", "a new question")]))
    by_id = {r.request_id: r for r in results}
    assert all(by_id[r.id].ok and by_id[r.id].cached for r in requests)
    assert not by_id["new"].ok and by_id["new"].reason == BUDGET_REASON
    assert server.stats()["requests"] == 3


def test_dry_run_estimate_counts_cached_tokens_and_cost_and_sends_nothing(server, tmp_path):
    role = server.role(price={"input_per_mtok": 2.0, "output_per_mtok": 10.0}, max_tokens=100)
    requests = [chat(f"q{i}", "x" * (40 + i)) for i in range(10)]
    with LLMSession(roles={"r": role}, cache_dir=tmp_path) as session:
        list(session.role("r").generate(requests[:3]))
        sent = server.stats()["requests"]
    with LLMSession(roles={"r": role}, cache_dir=tmp_path, dry_run=True) as session:
        results = {r.request_id: r for r in session.role("r").generate(requests, phase="s")}
        estimate = session.role("r").estimate("s")
    assert server.stats()["requests"] == sent == 3  # the estimate sent nothing
    assert estimate["requests"] == 10 and estimate["cached"] == 3 and estimate["to_send"] == 7
    # Cached requests get their answer; the others a placeholder of max_tokens (~4 characters a token).
    assert [results[r.id].cached for r in requests] == [True] * 3 + [False] * 7
    assert all(is_placeholder(results[r.id]) and len(results[r.id].text) == 400 for r in requests[3:])
    assert not any(is_placeholder(results[r.id]) for r in requests[:3])
    prompt_tokens = sum(math.ceil((40 + i) / 4) + 4 for i in range(3, 10))  # ~4 characters a token + overhead
    assert estimate["est_prompt_tokens"] == prompt_tokens
    assert estimate["est_completion_tokens"] == 7 * 100  # max_tokens: an upper bound
    assert estimate["est_cost_usd"] == pytest.approx((prompt_tokens * 2.0 + 700 * 10.0) / 1e6)
    assert estimate["price_known"]


def test_price_table_and_unknown_prices(tmp_path):
    with LLMSession(roles={"g": {"model": "gpt-4-0613", "base_url": "http://127.0.0.1:9/v1"}}) as session:
        # gpt-4-0613 is priced by the longest matching entry, gpt-4
        assert session.prices["g"].input_per_mtok == 30.0 and session.prices["g"].output_per_mtok == 60.0
    with LLMSession(roles={"g": {"model": "gpt-4-0613", "base_url": "http://127.0.0.1:9/v1"}}, dry_run=True) as session:
        list(session.role("g").generate([chat("a", "y" * 400)]))
        estimate = session.role("g").estimate()
        assert estimate["est_cost_usd"] == pytest.approx((104 * 30.0 + 256 * 60.0) / 1e6)
    with LLMSession(roles={"k": {"model": "kit:tiny"}}, budget_usd=1.0) as session:
        assert session.prices["k"].cost(1000, 1000) == 0.0  # models we run ourselves cost nothing
    with pytest.raises(ConfigError, match=r"no price for model 'mystery-model'.*m\.price\.input_per_mtok"):
        LLMSession(roles={"m": {"model": "mystery-model", "base_url": "http://127.0.0.1:9/v1"}}, budget_usd=5)


def test_local_weights_behind_any_server_cost_nothing(tiny_model):
    role = {"model": tiny_model, "base_url": "http://127.0.0.1:9/v1"}
    with LLMSession(roles={"policy": role}, budget_usd=1.0) as session:
        assert session.prices["policy"].cost(10**6, 10**6) == 0.0
