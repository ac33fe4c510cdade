"""Warmup is given as steps or, like Stanford Alpaca's --warmup_ratio, as a share of all steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from safer_instruct.config import compose
from safer_instruct.errors import ConfigError
from safer_instruct.training.settings import SFTSettings, settings_from


def _warmup(warmup_steps: float) -> float:
    settings = settings_from(SFTSettings, {"warmup_steps": warmup_steps}, "train")
    return settings.trainer_kwargs(Path("/tmp/out"), world_size=1, seed=0, report_to="none")["warmup_steps"]


def test_a_share_below_one_reaches_transformers_as_a_share():
    assert _warmup(0.03) == pytest.approx(0.03)


def test_whole_steps_stay_whole_steps():
    value = _warmup(150.0)
    assert value == 150 and isinstance(value, int)


def test_a_fractional_step_count_above_one_is_refused():
    with pytest.raises(ConfigError, match=r"warmup_steps=1\.5"):
        _warmup(1.5)


def test_the_paper_reverse_recipe_warms_up_like_alpaca():
    cfg = compose("train_reverse", ["model=tiny", "data=demo_instructions", "train=reverse_paper"])
    settings = settings_from(SFTSettings, cfg.train, "train")
    trl = settings.trl_config({**settings.trainer_kwargs(Path("/tmp/out"), world_size=1, seed=0, report_to="none"),
                               "deepspeed": None})  # fmt: skip
    assert trl.warmup_steps == pytest.approx(0.03)
    # lr 2e-5 and 3 epochs are TRL's SFTConfig defaults, which the preset leaves to the schema
    assert (trl.learning_rate, trl.lr_scheduler_type, trl.num_train_epochs, settings.global_batch_size) == (2e-5, "cosine", 3.0, 128)
