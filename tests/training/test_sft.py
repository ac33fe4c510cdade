"""SFT on the tiny model: full, LoRA and QLoRA train, save, resume; the CLI runs end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import open_dict
from safetensors.torch import load_file

from safer_instruct.data.instructions import DEMO_INSTRUCTIONS
from safer_instruct.training.run import run_sft
from safer_instruct.training.trainers import read_metrics
from tests.training.helpers import ParamWatcher, python, run_script, stage_config

QUICK = ["model=tiny", "train.max_steps=3", "train.learning_rate=1e-3", "train.global_batch_size=4",
         "train.per_device_train_batch_size=2", "train.save_strategy=no"]  # fmt: skip


@pytest.mark.parametrize("peft", ["none", "lora", "qlora"])
def test_sft_trains_every_trainable_parameter(tmp_path, peft):
    overrides = [*QUICK, f"peft={peft}"]
    if peft == "qlora":
        overrides.append("peft.compute_dtype=float32")
    cfg = stage_config("train_sft", tmp_path, *overrides)
    watcher = ParamWatcher()
    summary = run_sft(cfg, tmp_path, callbacks=[watcher])

    assert watcher.checked > 0 and watcher.unchanged == []
    assert watcher.quantized == (peft == "qlora")  # QLoRA trains over bitsandbytes 4-bit layers
    if peft != "none":
        assert all("lora_" in name for name in watcher.before)
    losses = [row["loss"] for row in read_metrics(tmp_path / "metrics.jsonl") if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert summary["global_step"] == 3
    # global batch 4 = 2 per device x 1 process x 2 accumulation steps
    assert summary["gradient_accumulation_steps"] == 2
    assert (tmp_path / "model" / "config.json").is_file()
    if peft == "none":
        assert (tmp_path / "model" / "model.safetensors").is_file() and summary["adapter"] is None
    else:
        assert (tmp_path / "adapter" / "adapter_config.json").is_file()
        # merged weights of the trained adapter differ from the base in the adapted layers
        base = load_file(Path(summary["started_from"]["model"]) / "model.safetensors")
        merged = load_file(tmp_path / "model" / "model.safetensors")
        proj = next(k for k in base if k.endswith("q_proj.weight"))
        assert not (base[proj].float() == merged[proj].float()).all()
    stats = json.loads((tmp_path / "data_stats.json").read_text())
    rows = sum(1 for line in DEMO_INSTRUCTIONS.read_text().splitlines() if line.strip())
    assert stats["load"]["kept"] == stats["rows_read"] == stats["rows_used"] == rows and stats["removed"] == {}
    # the run names what it trained on: rows, tokens, steps and (no) draw
    assert summary["data"]["pairs"] == rows and summary["data"]["tokens"] == stats["tokens"] > rows
    assert summary["data"]["optimizer_steps"] == summary["data"]["optimizer_steps_planned"] == 3
    assert summary["data"]["sample"]["size"] is None and summary["data"]["sample"]["matched"] is False
    assert summary["started_from"]["revision"] == {"requested": None, "resolved": None}  # a local kit model
    # Every effective TRL value, the defaults the preset leaves out included, and no token.
    trl_config = json.loads((tmp_path / "trl_config.json").read_text())
    assert (trl_config["learning_rate"], trl_config["max_steps"], trl_config["gradient_accumulation_steps"]) == (1e-3, 3, 2)
    assert (trl_config["optim"], trl_config["weight_decay"], trl_config["max_grad_norm"], trl_config["bf16"]) == (
        "adamw_torch", 0.0, 1.0, False)
    assert trl_config["hub_token"] == "<HUB_TOKEN>" and trl_config["output_dir"] == str(tmp_path)


def test_sft_on_preference_data_uses_chosen_and_truncates_prompts(tmp_path):
    rows = [{"prompt": "word " * (60 + i), "chosen": f"Answer {i}.", "rejected": None} for i in range(6)]
    rows += [{"prompt": f"Short question {i}?", "chosen": f"Short answer {i}.", "rejected": "bad"} for i in range(6)]
    data = tmp_path / "pref.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cfg = stage_config("train_sft", out, *QUICK, "data=constructed", f"data.path={data}", "model.max_prompt_length=24")
    summary = run_sft(cfg, out)
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["load"]["kept"] == 12  # rows without `rejected` are fine for SFT
    assert stats["tokenization"]["prompts_truncated"] == 6
    assert stats["tokenization"]["max_prompt_tokens"] <= 24
    assert summary["data"]["prompts_truncated"] == 6


def test_sft_resumes_from_its_last_checkpoint(tmp_path):
    first = stage_config("train_sft", tmp_path, *QUICK, "train.max_steps=2", "train.save_strategy=steps", "train.save_steps=1")
    run_sft(first, tmp_path)
    assert (tmp_path / "checkpoint-2").is_dir()
    second = stage_config("train_sft", tmp_path, *QUICK, "train.max_steps=4", "train.save_strategy=steps", "train.save_steps=1")
    summary = run_sft(second, tmp_path)
    assert summary["resumed_from"].endswith("checkpoint-2")
    assert summary["global_step"] == 4
    steps = [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl") if "loss" in row]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 from the resumed one, none twice


def test_cli_train_sft_model_tiny_end_to_end(tmp_path):
    out = tmp_path / "sft"
    proc = run_script([str(Path(python()).parent / "safer-instruct"), "train", "sft", "model=tiny",
                       "train.max_steps=2", f"out_dir={out}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "versions.json", "metrics.jsonl", "train_summary.json", "data_stats.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["model"] == str(out / "model")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.num_parameters() == summary["trainable_parameters"]


def test_cli_names_a_missing_model_preset_before_loading_anything(tmp_path):
    proc = run_script([str(Path(python()).parent / "safer-instruct"), "train", "sft", f"out_dir={tmp_path}"], timeout=60)
    assert proc.returncode == 2
    assert "model" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # wandb starts its service process
def test_wandb_offline_run_and_local_metrics_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = stage_config("train_sft", tmp_path, *QUICK, "train.max_steps=2")
    with open_dict(cfg):
        cfg.tracking.mode = "offline"
    run_sft(cfg, tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    logged = [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl") if "loss" in row]
    assert logged == [1, 2]
