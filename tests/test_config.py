"""Config helpers: secrets never saved, required keys named, versions recorded."""

import json

import pytest
import yaml
from omegaconf import OmegaConf

from safer_instruct.config import check_required, redact, save_run_config, to_plain
from safer_instruct.errors import ConfigError
from safer_instruct.tracking import resolve_mode


def test_redact_removes_secret_values_and_keeps_env_names(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-live-123456")
    cfg = OmegaConf.create({
        "judge": {"api_key_env": "MY_JUDGE_KEY", "model": "gpt-4", "hf_token": "hf_abc"},
        "note": "called with sk-live-123456 by mistake",
        "items": [{"password": "pw"}],
    })  # fmt: skip
    plain = to_plain(cfg)
    assert plain["judge"]["api_key_env"] == "MY_JUDGE_KEY"
    assert plain["judge"]["hf_token"] == "<redacted>"
    assert plain["items"][0]["password"] == "<redacted>"
    assert "sk-live" not in json.dumps(plain)
    assert redact({"api_key": ""}) == {"api_key": ""}  # nothing to hide


def test_saved_config_has_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-live-abcdef")
    cfg = OmegaConf.create({"judge": {"api_key_env": "MY_JUDGE_KEY"}, "echo": "${oc.env:MY_JUDGE_KEY}"})
    save_run_config(cfg, tmp_path)
    text = (tmp_path / "config.yaml").read_text()
    assert "sk-live" not in text and "MY_JUDGE_KEY" in text
    versions = json.loads((tmp_path / "versions.json").read_text())
    assert versions["torch"].startswith("2.13") and "transformers" in versions


def test_missing_required_keys_are_named():
    cfg = OmegaConf.create({"data": {"path": "???"}, "model": {"path": "kit:tiny"}, "judge": {"model": "???"}})
    with pytest.raises(ConfigError, match=r"data\.path, judge\.model .*data\.path=\.\.\."):
        check_required(cfg)


def test_tracking_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("HOME", "/nonexistent")
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"
    with pytest.raises(ConfigError, match="tracking.mode"):
        resolve_mode("sometimes")


PAPER_ROWS = {"paper_alpaca": [], "paper_hh_rlhf": [], "paper_pku_saferlhf": [], "paper_release": [],
              "paper_safer_instruct": ["paper.sharegpt_path=/data/sharegpt.json", "paper.corpus_path=/data/texts.jsonl"]}  # fmt: skip


@pytest.mark.parametrize("experiment", list(PAPER_ROWS))
def test_paper_rows_evaluate_at_the_model_context_length_with_claude3_judging_first(experiment, tmp_path):
    """What each paper row's evaluation jobs run with (the configs `run ... dry_run=true` prints)."""
    from safer_instruct.config import compose
    from safer_instruct.pipeline.plan import build_plan

    cfg = compose("run", [f"experiment={experiment}", "launcher=slurm", "dry_run=true", *PAPER_ROWS[experiment]])
    plan = build_plan(cfg, tmp_path)
    downstream = compose("eval_downstream", plan.overrides("downstream"))
    # LLaMA-7B's context (max_position_embeddings 2048), not the training length of 512.
    assert (downstream.model.name, downstream.model.context_length) == ("alpaca-7b", 2048)
    assert downstream.harness.max_length == 2048 and downstream.model.max_length == 512
    harmless = compose("eval_harmlessness", plan.overrides("harmless"))
    assert harmless.judge.model == "claude-3-opus-20240229" and harmless.second_judge.model == "gpt-4-0613"
    assert harmless.judge.backend == "anthropic" and harmless.prompts.name == "release_test_set"


def test_every_model_preset_names_its_context_length():
    from safer_instruct.model_kit import TINY_ARCHITECTURE
    from safer_instruct.paths import CONF_DIR

    presets = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF_DIR / "model").glob("*.yaml")}
    assert {name: preset["context_length"] for name, preset in presets.items()} == {
        "alpaca-7b": 2048, "llama-7b": 2048, "llama2-7b": 4096, "tinyllama-1.1b": 2048,
        "smollm2-135m": 8192, "tiny": TINY_ARCHITECTURE["max_position_embeddings"]}  # fmt: skip
    for name, preset in presets.items():
        assert preset["max_length"] <= preset["context_length"], name
