"""One digest and one model identity behind every reuse (LLM cache, reference log-probs, resume)."""

from __future__ import annotations

import shutil

from safer_instruct.identity import digest, is_content_identity, model_identity
from safer_instruct.llm.cache import cache_key
from safer_instruct.llm.types import ChatRequest


def test_digest_ignores_key_order_and_tells_values_apart():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    assert len(digest({"a": 1}, 16)) == 16 and digest({"a": 1}).startswith(digest({"a": 1}, 16))
    assert digest({"path": "é"}) != digest({"path": "e"})


def test_the_llm_cache_key_is_the_digest_of_its_request():
    request = ChatRequest(id="a", messages=({"role": "user", "content": "hi"},))
    params = {"temperature": 0.0, "max_tokens": 8}
    expected = {"model": "m", "messages": [["user", "hi"]], "prompt": None, "params": params, "sample_index": 0}
    assert cache_key("m", request, params) == digest(expected)


def test_a_model_is_its_files_wherever_they_are(tiny_model, tmp_path):
    identity = model_identity(tiny_model)
    assert is_content_identity(identity) and model_identity("kit:tiny") == identity
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert model_identity(str(copy)) == identity  # another folder, other mtimes: the same model
    # The tokenizer is part of the model: another tokenizer file is another model.
    tokenizer = next(p for p in copy.iterdir() if p.name.startswith("tokenizer") and p.suffix == ".json")
    tokenizer.write_text(tokenizer.read_text() + " ")
    assert model_identity(str(copy)) != identity
    assert model_identity("gpt-4-0613") == "gpt-4-0613" and not is_content_identity("gpt-4-0613")


def test_a_hub_id_in_the_local_cache_is_identified_by_its_snapshot_and_its_config_is_read(tmp_path, monkeypatch):
    """One lookup of the Hugging Face cache serves the identity and vLLM's config.json; nothing is downloaded."""
    import huggingface_hub.constants

    from safer_instruct.identity import folder_digest
    from safer_instruct.llm.servers import model_config_json

    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text('{"max_position_embeddings": 2048}')
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    identity = model_identity("org/tiny")
    assert identity == "files:" + folder_digest(snapshot) and model_config_json("org/tiny") == {"max_position_embeddings": 2048}
    (snapshot / "config.json").write_text('{"max_position_embeddings": 4096}')
    assert model_identity("org/tiny") != identity
    assert model_identity("org/absent") == "org/absent" and model_config_json("org/absent") is None
