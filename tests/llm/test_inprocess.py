"""In-process batched generation with the tiny model: no server."""

from __future__ import annotations

from safer_instruct.llm import ChatRequest, LLMSession

ROLE = {"backend": "inprocess", "model": "kit:tiny", "max_tokens": 6, "temperature": 0.0, "max_concurrency": 32,
        "batch_size": 4, "dtype": "float32", "device": "cpu"}  # fmt: skip
PROMPTS = ["def", "import os and then print the path of the file", "class A:", "return x + y if x else None and",
           "for i in range(10): print(i, i * i, i ** 3)", "x", "while True:", "with open(path) as f:"]  # fmt: skip


def test_batched_generation_is_left_padded_and_length_sorted(tmp_path):
    requests = [ChatRequest(id=f"p{i}", prompt=text) for i, text in enumerate(PROMPTS)]
    requests.append(ChatRequest(id="chat", messages=({"role": "user", "content": "hello there"},)))
    with LLMSession(roles={"policy": ROLE}, cache_dir=tmp_path / "a") as session:
        batched = {r.request_id: r for r in session.role("policy").generate(requests)}
        backend = session.role("policy").backend
        batches = backend.batches
    assert set(batched) == {r.id for r in requests}
    # 8 raw prompts in batches of at most 4 (plus the chat request in its own group), each sorted by length.
    assert sum(len(b) for b in batches) == 9 and all(len(b) <= 4 for b in batches)
    assert len(batches) < 9
    raw_lengths = [n for b in batches if len(b) > 1 for n in b]
    assert raw_lengths == sorted(raw_lengths)
    assert max(b[-1] - b[0] for b in batches) < max(raw_lengths) - min(raw_lengths)  # batches pad little

    # Left padding done right: a prompt generates the same greedy text alone as inside a padded batch.
    alone_role = {**ROLE, "batch_size": 1}
    with LLMSession(roles={"policy": alone_role}, cache_dir=tmp_path / "b") as session:
        alone = {r.request_id: r for r in session.role("policy").generate(requests)}
        assert all(len(b) == 1 for b in session.role("policy").backend.batches)
    for rid, result in batched.items():
        assert result.ok == alone[rid].ok
        if result.ok:
            assert result.text == alone[rid].text
            assert result.usage == alone[rid].usage and result.usage.prompt_tokens > 0
            assert not result.cached and result.model == "kit:tiny"


def test_inprocess_sampling_and_cache(tmp_path):
    role = {**ROLE, "temperature": 1.0, "max_tokens": 8, "seed": 0}
    samples = [ChatRequest(id=f"s{k}", prompt="def main():", sample_index=k) for k in range(4)]
    with LLMSession(roles={"policy": role}, cache_dir=tmp_path) as session:
        first = {r.request_id: r.text for r in session.role("policy").generate(samples) if r.ok}
    assert len(set(first.values())) >= 2  # sampled, not greedy
    with LLMSession(roles={"policy": role}, cache_dir=tmp_path) as session:
        again = {r.request_id: r for r in session.role("policy").generate(samples)}
        assert session.role("policy").backend is None  # fully cached: the model is never loaded
    assert all(again[k].cached and again[k].text == text for k, text in first.items())
