"""Tokenization (one BOS, one EOS, prompt truncation), settings validation, recipes, launch plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import processors

from safer_instruct.config import compose
from safer_instruct.data.instructions import InstructionRecord
from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.errors import ConfigError
from safer_instruct.formatting import PromptFormat
from safer_instruct.model_kit import load_tokenizer
from safer_instruct.training.distributed import first_host, slurm_to_torch_env
from safer_instruct.training.preprocess import Encoder, dpo_columns, fingerprint_columns, sft_columns
from safer_instruct.training.settings import DPOSettings, PeftSettings, SFTSettings, settings_from


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("kit:tiny")


@pytest.fixture(scope="module")
def bos_tokenizer():
    """The tiny tokenizer made to add a BOS like Llama's does."""
    tok = load_tokenizer("kit:tiny")
    bos = tok.bos_token
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    return tok


def _split(columns, index=0):
    ids, mask = columns["input_ids"][index], columns["completion_mask"][index]
    return [t for t, m in zip(ids, mask, strict=True) if not m], [t for t, m in zip(ids, mask, strict=True) if m]


@pytest.mark.parametrize("style", ["chat", "alpaca"])
def test_one_eos_per_completion_and_no_bos_when_the_tokenizer_adds_none(tokenizer, style):
    fmt = PromptFormat(style, tokenizer)
    columns = dpo_columns(Encoder(tokenizer, 256, 200), fmt, [PreferenceRecord("Name a fruit.", "Apple.", "Rock.")])
    for name in ("chosen_ids", "rejected_ids"):
        completion = columns[name][0]
        assert completion.count(tokenizer.eos_token_id) == 1
        assert tokenizer.decode(completion) == fmt.completion("Apple." if name == "chosen_ids" else "Rock.", "Name a fruit.")
    assert tokenizer.bos_token_id not in columns["prompt_ids"][0]


@pytest.mark.parametrize("template_has_bos", [False, True])
def test_exactly_one_bos_when_the_tokenizer_adds_one(bos_tokenizer, template_has_bos):
    fmt = PromptFormat("alpaca", bos_tokenizer)
    if template_has_bos:  # chat templates such as Llama-2's write the BOS into the text themselves
        bos_tokenizer.chat_template = "{{ bos_token }}" + load_tokenizer("kit:tiny").chat_template
        fmt = PromptFormat("chat", bos_tokenizer)
    prompt, completion = _split(sft_columns(Encoder(bos_tokenizer, 256, 200), fmt, [InstructionRecord("Hi?", "Hello.")]))
    assert prompt[0] == bos_tokenizer.bos_token_id and (prompt + completion).count(bos_tokenizer.bos_token_id) == 1


def test_long_prompts_keep_bos_and_their_end_and_are_counted(bos_tokenizer):
    fmt = PromptFormat("alpaca", bos_tokenizer)
    encoder = Encoder(bos_tokenizer, max_length=40, max_prompt_length=24)
    rows = [InstructionRecord("alpha " * 50 + "final words here", "Short."), InstructionRecord("Hi?", "word " * 60)]
    columns = sft_columns(encoder, fmt, rows)
    prompt, _ = _split(columns, 0)
    full_prompt = [bos_tokenizer.bos_token_id, *bos_tokenizer(fmt.prompt(rows[0].instruction), add_special_tokens=False)["input_ids"]]
    assert len(prompt) == 24 and prompt[0] == bos_tokenizer.bos_token_id and prompt[1:] == full_prompt[-23:]
    assert bos_tokenizer.decode(prompt).endswith("### Response:\n")
    assert all(len(ids) <= 40 for ids in columns["input_ids"])
    assert encoder.stats.prompts_truncated == 2 and encoder.stats.completions_truncated == 1
    assert encoder.stats.max_prompt_tokens == 24 and encoder.stats.max_sequence_tokens == 40


def test_fingerprint_follows_the_token_ids(tokenizer):
    fmt = PromptFormat("chat", tokenizer)
    pairs = [PreferenceRecord("Q?", "A.", "B.")]
    one = fingerprint_columns(dpo_columns(Encoder(tokenizer, 256, 200), fmt, pairs))
    same = fingerprint_columns(dpo_columns(Encoder(tokenizer, 256, 200), fmt, pairs))
    other = fingerprint_columns(dpo_columns(Encoder(tokenizer, 256, 200), fmt, [PreferenceRecord("Q?", "A.", "C.")]))
    assert one == same != other


def test_gradient_accumulation_keeps_the_global_batch_for_any_world_size():
    recipe = settings_from(SFTSettings, {"global_batch_size": 64, "per_device_train_batch_size": 8}, "train")
    assert [recipe.gradient_accumulation(n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match="cannot be split over 3 process"):
        recipe.gradient_accumulation(3)


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (SFTSettings, {"global_batch_size": 10, "per_device_train_batch_size": 4}, "not a multiple"),
        (SFTSettings, {"max_steps": 0}, "max_steps"),
        (SFTSettings, {"deepspeed": "zero9"}, "zero2, zero3, zero3_offload"),
        (SFTSettings, {"num_epochs": 2}, r"train.num_epochs: neither ours .* nor a field of TRL's SFTConfig"),
        (SFTSettings, {"gradient_accumulation_steps": 2}, "set from train.global_batch_size and the world size"),
        (SFTSettings, {"beta": 0.1}, "nor a field of TRL's SFTConfig"),  # a DPO setting in an SFT recipe
        (DPOSettings, {"loss_type": ["dpo"]}, "unknown: choose from sigmoid"),
        (DPOSettings, {"beta": 0}, "beta must be > 0"),
        (DPOSettings, {"precompute_ref_log_probs": False}, "ref_logps_cache=true needs"),
        (PeftSettings, {"method": "adapter"}, "none, lora, qlora"),
    ],
)
def test_settings_say_what_is_wrong(cls, values, message):
    with pytest.raises(ConfigError, match=message):
        settings_from(cls, values, "train" if cls is not PeftSettings else "peft")


def test_trl_refuses_its_own_bad_values_in_our_words():
    settings = settings_from(DPOSettings, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0], "ref_logps_cache": False}, "train")
    kwargs = settings.trainer_kwargs(Path("/tmp/x"), 1, 0, "none")
    with pytest.raises(ConfigError, match="TRL's DPOConfig refuses these settings: `loss_weights` must have the same length"):
        settings.trl_config(kwargs)


def test_unknown_keys_and_bad_lengths_are_named():
    with pytest.raises(ConfigError, match="train.betta"):
        settings_from(DPOSettings, {"betta": 0.1}, "train")
    with pytest.raises(ConfigError, match="peft.rank"):
        settings_from(PeftSettings, {"rank": 8}, "peft")
    with pytest.raises(ConfigError, match="max_prompt_length=300 must be"):
        Encoder(load_tokenizer("kit:tiny"), max_length=256, max_prompt_length=300)


def test_every_settings_field_has_help():
    from dataclasses import fields

    for cls in (SFTSettings, DPOSettings, PeftSettings):
        assert all(f.metadata.get("help") for f in fields(cls)), cls


def test_paper_recipes_compose_into_valid_settings():
    dpo_cfg = compose("train_dpo", ["model=alpaca-7b", "train=dpo_paper", "data.path=x.jsonl"])
    dpo = settings_from(DPOSettings, dpo_cfg.train, "train")
    trl = dpo.trl
    assert (trl["beta"], trl["learning_rate"], trl["optim"], trl["warmup_steps"], trl["num_train_epochs"]) == (0.1, 5e-7, "rmsprop", 150, 1.0)
    assert dpo.global_batch_size == 32 and trl["bf16"] and dpo.deepspeed.endswith("conf/deepspeed/zero3.json")
    assert (dpo_cfg.model.max_length, dpo_cfg.model.max_prompt_length) == (512, 256)
    sft = settings_from(SFTSettings, compose("train_sft", ["model=alpaca-7b", "train=sft_paper"]).train, "train")
    assert sft.global_batch_size == 64 and sft.trl["optim"] == "rmsprop"
    ds = json.loads(Path(dpo.deepspeed).read_text())
    assert ds["bf16"]["enabled"] == "auto" and ds["zero_optimization"]["stage"] == 3
    kwargs = dpo.trainer_kwargs(Path("/tmp/x"), 8, 42, "none")
    assert kwargs["gradient_accumulation_steps"] == 1 and kwargs["per_device_train_batch_size"] == 4
    args = dpo.trl_config({**kwargs, "deepspeed": None})  # TRL's own config takes the recipe as it is
    assert (args.optim, args.lr_scheduler_type, args.beta, args.precompute_ref_batch_size) == ("rmsprop", "constant_with_warmup", 0.1, 8)


def test_srun_without_a_launcher_gets_torch_distributed_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(name, "")  # recorded, so that teardown also removes what slurm_to_torch_env sets
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "12345")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    assert slurm_to_torch_env()
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "8", "3")
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(20000 + 12345 % 20000)
    assert first_host("node[01-04,09],login") == "node01" and first_host("single") == "single"
