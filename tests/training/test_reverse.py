"""Reversed instruction tuning: response -> instruction, loss on the instruction only, template versioned."""

from __future__ import annotations

import json

import pytest

from safer_instruct.data.instructions import InstructionRecord
from safer_instruct.errors import ConfigError
from safer_instruct.formatting import render_reverse_prompt, reverse_template
from safer_instruct.model_kit import load_tokenizer
from safer_instruct.training.preprocess import Encoder, reverse_columns
from safer_instruct.training.run import run_reverse
from safer_instruct.training.trainers import read_metrics
from tests.training.helpers import ParamWatcher, stage_config, write_jsonl


def test_reverse_template_has_the_papers_structure():
    template = reverse_template()
    text = render_reverse_prompt("Paris is the capital of France. {not a field}")
    header, rest = text.split("\n\n", 1)
    assert "request" in header.lower() and "{response}" not in text
    assert rest.startswith("### Reply:\nParis is the capital of France. {not a field}\n\n")
    assert text.endswith("### Request:\n")
    assert template.tag == "reverse@v1"


def test_reverse_sequences_put_the_loss_on_the_instruction_and_its_eos_only():
    tokenizer = load_tokenizer("kit:tiny")
    example = InstructionRecord("Name a fruit.", "Apple is a fruit.", "Keep it short.")
    columns = reverse_columns(Encoder(tokenizer, 256, 200), reverse_template(), [example])
    ids, mask = columns["input_ids"][0], columns["completion_mask"][0]
    prompt = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    target = [t for t, m in zip(ids, mask, strict=True) if m]
    assert prompt == render_reverse_prompt("Apple is a fruit.")
    assert tokenizer.decode(target[:-1]) == "Name a fruit.\n\nKeep it short."
    assert target[-1] == tokenizer.eos_token_id and target.count(tokenizer.eos_token_id) == 1


def test_train_reverse_on_sharegpt_and_messages_rows(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."},
                           {"from": "human", "value": f"Follow-up {i}?"}, {"from": "gpt", "value": f"More {i}."}]}
        for i in range(4)
    ] + [{"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": f"Hi {i}"},
                       {"role": "assistant", "content": f"Hello {i}!"}]} for i in range(4)]  # fmt: skip
    data = write_jsonl(tmp_path / "chats.jsonl", rows)
    out = tmp_path / "run"
    cfg = stage_config("train_reverse", out, "model=tiny", "data=sharegpt", f"data.path={data}", "data.format=auto",
                       "train.max_steps=3", "train.learning_rate=1e-3", "train.save_strategy=no")  # fmt: skip
    watcher = ParamWatcher()
    summary = run_reverse(cfg, out, callbacks=[watcher])
    assert watcher.unchanged == [] and watcher.checked > 0
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["load"]["rows_read"] == 8 and stats["load"]["kept"] == 12  # 4 x 2 exchanges + 4 x 1
    assert stats["load"]["notes"]["extra_pairs_from_conversations"] == 4
    assert summary["global_step"] == 3
    card = json.loads((out / "model" / "reverse_prompt.json").read_text())
    assert card["version"] == reverse_template().version and "{response}" in card["template"]
    assert all(r["loss"] > 0 for r in read_metrics(out / "metrics.jsonl") if "loss" in r)


def test_the_paper_preset_is_the_upstream_reverse_prompt_verbatim():
    paper = reverse_template("reverse_paper")
    assert paper.tag == "reverse-paper@v1"
    assert render_reverse_prompt("Paris is the capital of France.", paper) == (
        "Below is a response to a certain instruction. Write the instruction that the response is trying to "
        "complete.\n\n### response:\nParis is the capital of France.\n\n### Instruction:"
    )
    with pytest.raises(ConfigError, match="no reverse template preset 'reverse_nope'.*reverse_paper"):
        reverse_template("reverse_nope")


def test_a_long_response_is_cut_inside_the_prompt_and_the_instruction_is_kept():
    tokenizer = load_tokenizer("kit:tiny")
    template = reverse_template("reverse_paper")
    response = " ".join(f"Step {i}: mix the flour and water, then wait." for i in range(60))
    short, long_instruction = "Explain how to bake bread.", " ".join(["Explain every detail of baking bread."] * 4)
    encoder = Encoder(tokenizer, 160, 100)
    columns = reverse_columns(encoder, template, [InstructionRecord(short, response),
                                                  InstructionRecord(long_instruction, response)])
    prompts = []
    for ids, mask, instruction in zip(columns["input_ids"], columns["completion_mask"], (short, long_instruction),
                                      strict=True):  # fmt: skip
        prompt_ids = [t for t, m in zip(ids, mask, strict=True) if not m]
        target = [t for t, m in zip(ids, mask, strict=True) if m]
        assert len(ids) <= 160 and tokenizer.decode(target[:-1]) == instruction  # the whole instruction
        prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
        head, kept = prompt.split("### response:\n", 1)
        kept = kept.rsplit("\n\n### Instruction:", 1)[0]
        assert head.startswith("Below is a response") and prompt.endswith("\n\n### Instruction:")
        assert response.startswith(kept) and len(kept) < len(response)  # the response's start, cut
        prompts.append(prompt_ids)
    assert len(prompts[0]) <= 100  # model.max_prompt_length
    assert len(prompts[1]) < len(prompts[0])  # a long instruction takes room from the response, not the reverse
    assert encoder.stats.prompts_truncated == 2 and encoder.stats.completions_truncated == 0


def test_a_prompt_budget_smaller_than_the_template_is_a_config_error():
    from safer_instruct.errors import ConfigError

    tokenizer = load_tokenizer("kit:tiny")
    with pytest.raises(ConfigError, match=r"model.max_prompt_length=40 leaves no room for the response: the reverse "
                                          r"template reverse-paper@v1 alone takes \d+ tokens"):  # fmt: skip
        reverse_columns(Encoder(tokenizer, 80, 40), reverse_template("reverse_paper"), [InstructionRecord("Q?", "A.")])
