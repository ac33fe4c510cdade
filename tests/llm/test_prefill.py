"""Assistant prefill: the answer starts with given text (e.g. `{"verdict": "`), which the model continues.

What reaches the server is checked on the loopback FaultServer (it records request bodies); the chat
template comes from the real tiny model's tokenizer, the in-process and `transformers serve` paths run
the real tiny model.
"""

from __future__ import annotations

import logging

import pytest

from safer_instruct.errors import ConfigError
from safer_instruct.formatting import PromptFormat
from safer_instruct.llm import ChatRequest, LLMSession, parse_role
from safer_instruct.llm.cache import cache_key
from safer_instruct.llm.chat import ChatRenderer
from safer_instruct.model_kit import load_tokenizer
from safer_instruct.verdict import JUDGE_VERDICTS, parse_verdict
from tests.helpers.servers import FaultServer, tiny_role_config

PREFILL = '{"verdict": "'
SYSTEM = "You are a careful safety evaluator."


def judge_request(rid: str, text: str, prefill: str | None = PREFILL) -> ChatRequest:
    messages = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": text})
    return ChatRequest(id=rid, messages=messages, prefill=prefill)


CONTINUATION = 'harmful", "rationale": "it gives instructions"}'


def continuation(path: str, body: dict) -> str:
    """A scripted model: continues a prefilled verdict (a templated text completion, or Anthropic's
    trailing assistant message), or answers a chat in full."""
    if path == "/v1/completions" and body["prompt"].endswith(PREFILL):
        return CONTINUATION
    if path == "/v1/messages" and body["messages"][-1] == {"role": "assistant", "content": PREFILL}:
        return CONTINUATION
    return '{"verdict": "harmless", "rationale": "unprefilled"}'


@pytest.fixture()
def server():
    with FaultServer(responder=continuation) as srv:
        yield srv


def test_prefilled_chat_reaches_the_server_as_the_templated_prompt_ending_with_the_prefill(server, tmp_path):
    # The role's model has local weights (the tiny kit model), so its chat template is rendered here.
    role = server.role(model="kit:tiny")
    with LLMSession(roles={"judge": role}, cache_dir=tmp_path) as session:
        results = {r.request_id: r for r in session.role("judge").generate(
            [judge_request("pre", "Is this harmful?"), judge_request("plain", "Is this harmful?", prefill=None)])}
    stats = server.stats()
    assert stats["by_path"] == {"/v1/completions": 1, "/v1/chat/completions": 1}
    (completion_body,) = [b for b in stats["bodies"] if "prompt" in b]
    # Exactly the text the project's one prompt formatter gives for this system + user turn, then the prefill.
    expected = PromptFormat("chat", load_tokenizer("kit:tiny"), system_prompt=SYSTEM).prompt("Is this harmful?")
    assert completion_body["prompt"] == expected + PREFILL
    assert completion_body["prompt"].startswith("<|im_start|>system\n") and "messages" not in completion_body
    # The answer is the whole assistant turn: prefill + continuation, and it parses.
    assert results["pre"].text == PREFILL + CONTINUATION
    assert parse_verdict(results["pre"].text, JUDGE_VERDICTS).verdict == "harmful"
    (chat_body,) = [b for b in stats["bodies"] if "messages" in b]  # no prefill: a chat completion as before
    assert chat_body["messages"][-1] == {"role": "user", "content": "Is this harmful?"}
    assert results["plain"].text == '{"verdict": "harmless", "rationale": "unprefilled"}'


def test_the_cache_tells_a_prefilled_request_from_an_unprefilled_one(server, tmp_path):
    params = {"temperature": 0.0, "max_tokens": 8, "top_p": None, "stop": None, "seed": None}
    keys = {cache_key("m", judge_request("a", "q", prefill=p), params) for p in (None, PREFILL, '{"v": "')}
    assert len(keys) == 3
    role = server.role(model="kit:tiny")
    requests = [judge_request("pre", "same question"), judge_request("plain", "same question", prefill=None)]
    with LLMSession(roles={"judge": role}, cache_dir=tmp_path) as session:
        first = {r.request_id: r.text for r in session.role("judge").generate(requests)}
    assert server.stats()["requests"] == 2 and first["pre"] != first["plain"]
    with LLMSession(roles={"judge": role}, cache_dir=tmp_path) as session:
        again = {r.request_id: r for r in session.role("judge").generate(requests)}
    assert server.stats()["requests"] == 2  # both answered from the cache, each with its own text
    assert all(again[k].cached and again[k].text == text for k, text in first.items())


def test_anthropic_gets_the_prefill_as_the_trailing_assistant_message(server, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "k")
    role = server.role(backend="anthropic", model="claude-3-opus-20240229", base_url=server.url,
                       api_key_env="FAKE_ANTHROPIC_KEY")  # fmt: skip
    with LLMSession(roles={"judge": role}, cache_dir=tmp_path) as session:
        (result,) = session.role("judge").generate([judge_request("a", "Is this harmful?")])
    (body,) = server.stats()["bodies"]
    assert body["system"] == SYSTEM
    assert body["messages"] == [{"role": "user", "content": "Is this harmful?"}, {"role": "assistant", "content": PREFILL}]
    assert result.text == PREFILL + CONTINUATION and parse_verdict(result.text, JUDGE_VERDICTS).verdict == "harmful"


def test_a_remote_model_without_local_weights_is_sent_no_prefill_and_warned_once(server, tmp_path, caplog):
    role = server.role(model="remote-model")  # an OpenAI-compatible endpoint; its chat template is unknown
    assert parse_role("judge", role).prefill_support == "none"
    with LLMSession(roles={"judge": role}, cache_dir=tmp_path) as session, caplog.at_level(logging.WARNING):
        (unprefilled,) = session.role("judge").generate([judge_request("u", "q0", prefill=None)])
        results = list(session.role("judge").generate([judge_request(f"p{i}", f"q{i}") for i in range(3)]))
    assert server.stats()["by_path"] == {"/v1/chat/completions": 3}  # q0 prefilled = q0 unprefilled: a cache hit
    assert all(not any(m["role"] == "assistant" for m in b["messages"]) for b in server.stats()["bodies"])
    assert [r.cached for r in sorted(results, key=lambda r: r.request_id)] == [True, False, False]
    assert all(not r.text.startswith(PREFILL + PREFILL) and r.text.startswith('{"verdict"') for r in results)
    assert sum("prefill" in r.message for r in caplog.records if r.levelno == logging.WARNING) == 1
    caplog.clear()
    with LLMSession(roles={"judge": {**role, "prefill": "off"}}, cache_dir=tmp_path) as session, \
            caplog.at_level(logging.WARNING):  # fmt: skip
        list(session.role("judge").generate([judge_request("x", "q9")]))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and "prefill" in r.message]


def test_prefill_settings_and_what_each_backend_can_do(tiny_model):
    assert parse_role("r", {"model": "kit:tiny"}).prefill_support == "template"  # a managed server
    assert parse_role("r", {"model": tiny_model, "base_url": "http://h/v1"}).prefill_support == "template"
    assert parse_role("r", {"model": "kit:tiny", "backend": "inprocess"}).prefill_support == "template"
    assert parse_role("r", {"model": "claude-3", "backend": "anthropic"}).prefill_support == "native"
    assert parse_role("r", {"model": "gpt-4", "base_url": "https://api.openai.com/v1"}).prefill_support == "none"
    assert parse_role("r", {"model": "kit:tiny", "prefill": "off"}).prefill_support == "none"
    sent = parse_role("r", {"model": "kit:tiny", "verdict_prefill": PREFILL})
    assert (sent.verdict_prefill, sent.verdict_prefill_sent) == (PREFILL, PREFILL)
    dropped = parse_role("r", {"model": "gpt-4", "base_url": "https://x/v1", "verdict_prefill": PREFILL})
    assert (dropped.verdict_prefill, dropped.verdict_prefill_sent) == (PREFILL, None)
    assert parse_role("r", {"model": "m", "verdict_prefill": ""}).verdict_prefill is None
    with pytest.raises(ConfigError, match="r.prefill must be auto or off"):
        parse_role("r", {"model": "m", "prefill": "always"})
    with pytest.raises(ConfigError, match="r.verdict_prefill must be text"):
        parse_role("r", {"model": "m", "verdict_prefill": 3})
    with pytest.raises(ConfigError, match="whitespace"):
        parse_role("r", {"model": "claude-3", "backend": "anthropic", "verdict_prefill": '{"verdict": '})
    with pytest.raises(ValueError, match="prefill must be non-empty"):
        ChatRequest(id="a", prompt="x", prefill="")


def test_a_bos_the_endpoint_adds_itself_is_not_doubled(tiny_model):
    from tokenizers.processors import TemplateProcessing

    tokenizer = load_tokenizer(tiny_model)
    bos = tokenizer.bos_token
    renderer = ChatRenderer(tokenizer=tokenizer)
    text = renderer.completion_prompt([{"role": "user", "content": "hi"}], PREFILL)
    assert text == renderer.render([{"role": "user", "content": "hi"}]) + PREFILL and not text.startswith(bos)
    # A Llama-like tokenizer: the template writes BOS and tokenizing a raw prompt adds it again.
    tokenizer.chat_template = bos + tokenizer.chat_template
    tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A",
                                                             special_tokens=[(bos, tokenizer.bos_token_id)])  # fmt: skip
    rendered = renderer.render([{"role": "user", "content": "hi"}], PREFILL)
    sent = renderer.completion_prompt([{"role": "user", "content": "hi"}], PREFILL)
    assert rendered.startswith(bos) and sent == rendered[len(bos) :]
    assert tokenizer(sent)["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_in_process_generation_continues_the_prefill(tmp_path):
    role = {"backend": "inprocess", "model": "kit:tiny", "max_tokens": 6, "temperature": 0.0, "dtype": "float32"}
    prefilled = judge_request("pre", "Is this harmful?")
    with LLMSession(roles={"judge": role}, cache_dir=tmp_path) as session:
        (result,) = session.role("judge").generate([prefilled])
        backend = session.role("judge").backend
        backend_text = backend.render(prefilled)
        # The same text as a raw prompt: the model continues it identically (greedy).
        (raw,) = session.role("judge").generate([ChatRequest(id="raw", prompt=backend_text)])
    expected = PromptFormat("chat", load_tokenizer("kit:tiny"), system_prompt=SYSTEM).prompt("Is this harmful?")
    assert backend_text == expected + PREFILL
    assert result.ok and raw.ok and len(result.text) > len(PREFILL)
    assert result.text == PREFILL + raw.text and result.usage.prompt_tokens == raw.usage.prompt_tokens


def test_a_real_transformers_serve_continues_the_prefill(tmp_path):
    role = tiny_role_config(max_tokens=6)  # the shared managed `transformers serve` of kit:tiny
    prefilled = judge_request("pre", "Is this harmful?")
    rendered = ChatRenderer(role["model"]).completion_prompt(prefilled.messages, PREFILL)
    with LLMSession(roles={"judge": role}, cache_dir=tmp_path) as session:
        results = {r.request_id: r for r in session.role("judge").generate(
            [prefilled, ChatRequest(id="raw", prompt=rendered)])}
    pre, raw = results["pre"], results["raw"]
    assert pre.ok == raw.ok
    print("PRE", pre)
    if pre.ok:  # a random model may emit nothing at once (a recorded empty completion)
        assert pre.text == PREFILL + raw.text and pre.usage.prompt_tokens == raw.usage.prompt_tokens
    else:
        assert pre.reason.startswith("empty completion")
