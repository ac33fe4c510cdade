"""Config helpers: secrets never saved, required keys named, versions recorded."""

import json

import pytest
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
