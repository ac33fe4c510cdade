"""The conf/train presets set only what their recipe changes: every default comes from the stage's schema node
(our dataclass defaults, TRL's field defaults), and the effective TRL config of each recipe is pinned."""

from __future__ import annotations

import dataclasses
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from safer_instruct.config import compose, validate_overrides
from safer_instruct.errors import ConfigError
from safer_instruct.paths import CONF_DIR
from safer_instruct.training.settings import (
    DERIVED,
    SCHEMA_NAMES,
    TUNED_TRL_FIELDS,
    DPOSettings,
    SFTSettings,
    _trl_fields,
    schema_node,
    settings_from,
    trl_defaults,
)

PRESETS = sorted(p.stem for p in (CONF_DIR / "train").glob("*.yaml"))
STAGES = {"sft": ("train_sft", SFTSettings), "reverse": ("train_reverse", SFTSettings), "dpo": ("train_dpo", DPOSettings)}


def _stage(preset: str) -> tuple[str, type]:
    return STAGES[preset.split("_")[0]]


def _installed_trl_default(config_name: str, name: str):
    """Read here, in this process, from the installed TRL (enums by their names)."""
    spec = _trl_fields(config_name)[name]
    value = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    return getattr(value, "value", value)


def _schema_default(settings_cls: type, key: str):
    """The stage schema's value (ours, and the TRL fields the presets tune), else TRL's own default."""
    node = schema_node(settings_cls)
    return node[key] if key in node else _installed_trl_default(settings_cls.TRL_CONFIG, key)


def test_every_stage_has_presets():
    assert {p.split("_")[0] for p in PRESETS} == set(STAGES) and len(PRESETS) == 6


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_key_is_a_field_and_none_restates_its_default(preset):
    body = yaml.safe_load((CONF_DIR / "train" / f"{preset}.yaml").read_text())
    _, settings_cls = _stage(preset)
    assert body.pop("defaults") == [SCHEMA_NAMES[settings_cls.TRL_CONFIG], "_self_"]
    ours = {f.name for f in dataclasses.fields(settings_cls)} - {"trl"}
    stray = sorted(set(body) - ours - set(_trl_fields(settings_cls.TRL_CONFIG)))
    assert stray == [], f"conf/train/{preset}.yaml: keys neither ours nor TRL's {settings_cls.TRL_CONFIG}"
    restated = sorted(key for key, value in body.items() if value == _schema_default(settings_cls, key))
    assert restated == [], f"conf/train/{preset}.yaml restates the schema's defaults"
    # The check would see a restatement: TRL's loss_type default and our resume default.
    assert _schema_default(DPOSettings, "loss_type") == ["sigmoid"] and _schema_default(DPOSettings, "resume") == "auto"


@pytest.mark.parametrize("config_name", sorted(SCHEMA_NAMES))
def test_the_schema_node_holds_our_defaults_and_the_installed_trls(config_name):
    """The TRL defaults in the schema are the installed TRL's, read in a child process (composing imports no torch)."""
    settings_cls = SFTSettings if config_name == "SFTConfig" else DPOSettings
    installed = {name: _installed_trl_default(config_name, name) for name in TUNED_TRL_FIELDS[config_name]}
    assert trl_defaults()[config_name] == installed
    assert not set(TUNED_TRL_FIELDS[config_name]) & set(DERIVED)
    ours = {f.name: f.default for f in dataclasses.fields(settings_cls) if f.name != "trl"}
    stage = "train_dpo" if settings_cls is DPOSettings else "train_sft"
    train = compose(stage, ["model=tiny", f"train={SCHEMA_NAMES[config_name]}"]).train
    assert OmegaConf.to_container(train) == {**ours, **installed}
    assert (train.num_train_epochs, train.resume) == (3.0, "auto")
    if config_name == "DPOConfig":  # values TRL documents, so that the check above is not vacuous
        assert (train.beta, train.loss_type, train.learning_rate) == (0.1, ["sigmoid"], 1e-6)


def test_trl_defaults_are_read_once_per_trl_version_and_kept(tmp_path, monkeypatch):
    """A fresh cache root gets one file named by the TRL and transformers versions; a second read uses it."""
    monkeypatch.setenv("SAFER_INSTRUCT_CACHE", str(tmp_path))
    trl_defaults.cache_clear()
    try:
        first = trl_defaults()
        (kept,) = (tmp_path / "trl_defaults").glob("*.json")
        assert kept.name.startswith(f"trl{metadata.version('trl')}-transformers{metadata.version('transformers')}-")
        kept.write_text(kept.read_text().replace('"beta": 0.1', '"beta": 0.25'))  # the kept file is what is read
        trl_defaults.cache_clear()
        assert trl_defaults()["DPOConfig"]["beta"] == 0.25 and first["DPOConfig"]["beta"] == 0.1
    finally:
        trl_defaults.cache_clear()


# What each recipe trains with, whatever the preset writes out or leaves to a default (world size 1).
EFFECTIVE = {
    #                lr     epochs  schedule                beta  loss_type    bf16   ckpt   per-dev  accumulation
    "sft_cpu":       (2e-5, 1.0, "constant_with_warmup", None, "nll",       False, False, 4, 2),
    "sft_paper":     (5e-7, 1.0, "constant_with_warmup", None, "nll",       True,  True,  8, 8),
    "reverse_cpu":   (5e-5, 2.0, "constant_with_warmup", None, "nll",       False, False, 4, 2),
    "reverse_paper": (2e-5, 3.0, "cosine",               None, "nll",       True,  True,  4, 32),
    "dpo_cpu":       (5e-6, 1.0, "constant_with_warmup", 0.1,  ["sigmoid"], False, False, 4, 2),
    "dpo_paper":     (5e-7, 1.0, "constant_with_warmup", 0.1,  ["sigmoid"], True,  True,  4, 8),
}  # fmt: skip
FIELDS = ("learning_rate", "num_train_epochs", "lr_scheduler_type", "beta", "loss_type", "bf16", "gradient_checkpointing",
          "per_device_train_batch_size", "gradient_accumulation_steps")  # fmt: skip


def _effective(preset: str) -> tuple[dict, object]:
    config_name, settings_cls = _stage(preset)
    settings = settings_from(settings_cls, compose(config_name, ["model=tiny", f"train={preset}"]).train, "train")
    kwargs = settings.trainer_kwargs(Path("/tmp/unused"), world_size=1, seed=0, report_to="none")
    kwargs.pop("deepspeed")  # TRL builds a DeepSpeed config only under a distributed launch
    return settings.trl_config(kwargs).to_dict(), settings


@pytest.mark.parametrize("preset", PRESETS)
def test_the_effective_trl_config_of_each_recipe(preset):
    effective, settings = _effective(preset)
    assert tuple(effective.get(name) for name in FIELDS) == EFFECTIVE[preset]
    assert (effective["weight_decay"], effective["max_steps"], effective["eval_strategy"]) == (0.0, -1, "no")
    paper = preset.endswith("_paper")
    assert (effective["max_grad_norm"], effective["logging_steps"], effective["save_steps"]) == (
        (1.0 if preset == "reverse_paper" else 10.0, 10, 500) if paper else (1.0, 1, 50))
    assert settings.deepspeed == (str(CONF_DIR / "deepspeed" / "zero3.json") if paper else None)
    assert (settings.resume, settings.merge_adapter, settings.eval_size) == ("auto", True, 0)
    assert settings.global_batch_size == {"sft_paper": 64, "reverse_paper": 128, "dpo_paper": 32}.get(preset, 8)
    if isinstance(settings, DPOSettings):
        assert settings.ref_logps_cache and settings.ref_logps_dir is None and effective["precompute_ref_log_probs"]


@pytest.mark.parametrize("preset", PRESETS)
def test_a_default_left_to_the_schema_is_still_overridden_by_name(preset):
    config_name, _ = _stage(preset)
    base = ["model=tiny", f"train={preset}", *(["data.path=pairs.jsonl"] if config_name == "train_dpo" else [])]
    train = validate_overrides(config_name, [*base, "train.max_steps=5", "train.resume=never", "train.eval_steps=4"]).train
    assert (train.max_steps, train.resume, train.eval_steps) == (5, "never", 4)
    with pytest.raises(ConfigError, match="train.max_steps expects a number, got 'ten'"):
        validate_overrides(config_name, [*base, "train.max_steps=ten"])

