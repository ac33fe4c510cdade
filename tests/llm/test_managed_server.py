"""A real `transformers serve` of the tiny model, started and stopped by the session itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from safer_instruct.llm import ChatRequest, LLMSession, ManagedServer, ServerConfig, ServerStartError
from tests.helpers.servers import managed_tiny_server, tiny_role_config

ROOT = Path(__file__).resolve().parents[2]
LOCAL_ROLE = {"model": "kit:tiny", "max_tokens": 8, "temperature": 0.0, "max_concurrency": 4,
              "server": {"kind": "transformers", "device": "cpu", "startup_timeout_s": 120,
                         "extra_args": ["--log-level", "info"]}}  # fmt: skip


def chat(rid: str, text: str, **kw) -> ChatRequest:
    return ChatRequest(id=rid, messages=({"role": "user", "content": text},), **kw)


def posts(server: ManagedServer) -> int:
    """Completion requests the server itself logged (uvicorn access log at --log-level info)."""
    return server.log_path.read_text(errors="replace").count("POST /v1/")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("managed")
    roles = {"expert": LOCAL_ROLE, "judge": {**LOCAL_ROLE, "max_tokens": 6}, "sampler": {**LOCAL_ROLE, "temperature": 1.0}}
    with LLMSession(roles=roles, cache_dir=tmp / "cache", failures_path=tmp / "failures.jsonl") as sess:
        yield sess


def test_managed_server_answers_chat_and_raw_prompts(session):
    requests = [chat(f"c{i}", f"Write about topic {i}") for i in range(5)] + [ChatRequest(id="raw", prompt="Below is")]
    results = {r.request_id: r for r in session.role("expert").generate(requests, phase="s1")}
    assert set(results) == {r.id for r in requests}
    (server,) = session.resources
    assert server.running and server.url.startswith("http://127.0.0.1:") and server.port > 0
    for result in results.values():
        if result.ok:
            assert result.model == "kit:tiny" and result.usage.prompt_tokens > 0
            assert 0 < result.usage.completion_tokens <= 8 and result.finish_reason in ("stop", "length")
        else:  # a random model may emit nothing: that is a recorded failure, not a crash
            assert result.reason.startswith("empty completion")
    assert sum(r.ok for r in results.values()) >= 4
    assert posts(server) == 6


def test_roles_with_the_same_model_share_one_server_and_cache_makes_no_requests(session, tmp_path):
    requests = [chat(f"j{i}", f"Judge answer {i}") for i in range(4)]
    list(session.role("judge").generate(requests, phase="judge"))
    assert len(session.resources) == 1  # expert and judge: one model, one server
    server = session.resources[0]
    before = posts(server)
    again = list(session.role("judge").generate(requests, phase="judge"))
    assert posts(server) == before  # counted at the server: nothing new
    assert all(r.cached for r in again if r.ok) and session.role("judge").stats("judge")["cache_hits"] == sum(
        r.ok for r in again)

    # A fresh session over the same cache needs no server at all for a fully cached phase.
    answered = [r for r in requests if any(a.ok and a.request_id == r.id for a in again)]
    with LLMSession(roles={"judge": {**LOCAL_ROLE, "max_tokens": 6}}, cache_dir=session.cache.path.parent) as fresh:
        rerun = list(fresh.role("judge").generate(answered, phase="judge"))
        assert fresh.resources == []
    assert all(r.cached for r in rerun) and len(rerun) == len(answered)


def test_temperature_samples_differ_by_sample_index(session):
    samples = [chat(f"s{k}", "Write a story", sample_index=k) for k in range(4)]
    texts = {r.text for r in session.role("sampler").generate(samples, phase="induce") if r.ok}
    assert len(texts) >= 2  # transformers serve samples only because we send do_sample
    greedy = {r.text for r in session.role("expert").generate(
        [chat(f"g{k}", "Write a story", sample_index=k) for k in range(3)], phase="greedy") if r.ok}  # fmt: skip
    assert len(greedy) == 1


def test_server_is_stopped_when_the_caller_fails(tmp_path):
    with pytest.raises(KeyboardInterrupt), LLMSession(roles={"expert": LOCAL_ROLE}, cache_dir=tmp_path) as sess:
        for _ in sess.role("expert").generate([chat("a", "hello"), chat("b", "there")]):
            server = sess.resources[0]
            pid = server.proc.pid
            raise KeyboardInterrupt  # Ctrl-C in the middle of a stage
    assert not server.running and not alive(pid)


@pytest.mark.slow
def test_server_is_stopped_when_the_process_gets_sigterm(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from safer_instruct.llm import ChatRequest, LLMSession
        role = {LOCAL_ROLE!r}
        with LLMSession(roles={{"expert": role}}, cache_dir={str(tmp_path)!r}) as session:
            list(session.role("expert").generate([ChatRequest(id="a", prompt="hi")]))
            print("PID", session.resources[0].proc.pid, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PID "), line
    server_pid = int(line.split()[1])
    assert alive(server_pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(server_pid)


def test_a_server_that_dies_gives_a_clear_error_with_its_log(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    server = ManagedServer("broken", str(broken), ServerConfig(device="cpu", startup_timeout_s=60), log_dir=tmp_path)
    with pytest.raises(ServerStartError) as err:
        server.start()
    message = str(err.value)
    assert "exited with code" in message and str(server.log_path) in message
    last_line = server.log_path.read_text().strip().splitlines()[-1]
    assert last_line in message  # the log tail names the problem
    assert not server.running


def test_a_server_that_is_not_healthy_in_time_is_stopped(tmp_path, tiny_model):
    server = ManagedServer("kit:tiny", tiny_model, ServerConfig(device="cpu", startup_timeout_s=0.5), log_dir=tmp_path)
    with pytest.raises(ServerStartError, match=r"not healthy after .*startup_timeout_s"):
        server.start()
    assert not server.running


def test_shared_tiny_server_helper_gives_a_working_role(tmp_path):
    role = tiny_role_config(max_tokens=5)
    assert role["base_url"] == managed_tiny_server().base_url
    with LLMSession(roles={"policy": role}, cache_dir=tmp_path) as sess:
        results = list(sess.role("policy").generate([chat("a", "hello"), ChatRequest(id="b", prompt="x")]))
        assert sess.resources == []  # pointed at an existing server: nothing started here
    assert len(results) == 2 and any(r.ok for r in results)
