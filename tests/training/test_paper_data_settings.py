"""What the paper rows' training steps resolve to (composed as `safer-instruct run experiment=paper_*
launcher=slurm dry_run=true` composes each job): the same number of pairs for every row and stage, the
leakage guard required, pinned inputs, and the release row's DPO data."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from safer_instruct.config import compose
from safer_instruct.pipeline.plan import build_plan, step_config

TRAINED_ROWS = {"paper_hh_rlhf": "hh_rlhf", "paper_pku_saferlhf": "pku_saferlhf",
                "paper_release": "safer_instruct_release", "paper_safer_instruct": "constructed"}  # fmt: skip
ROW_OVERRIDES = {"paper_safer_instruct": ["paper.sharegpt_path=/data/sharegpt.json", "paper.corpus_path=/data/texts.jsonl"]}
DATA_REVISIONS = {"hh_rlhf": "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa", "pku_saferlhf": "v0",
                  "safer_instruct_release": None, "constructed": None}  # fmt: skip
ALPACA_NATIVE = "3bf09cbff2fbd92d7d88a0f70ba24fca372befdf"


@cache
def _steps(experiment: str, *extra: str) -> dict:
    cfg = compose("run", [f"experiment={experiment}", "launcher=slurm", "dry_run=true", *ROW_OVERRIDES.get(experiment, []),
                          *extra])  # fmt: skip
    plan = build_plan(cfg, Path("/tmp/paper-data-settings") / experiment)
    return {name: step_config(plan, name) for name in plan.steps}


@pytest.mark.parametrize("experiment", sorted(TRAINED_ROWS))
def test_every_row_trains_sft_and_dpo_on_the_same_drawn_pairs_without_test_prompts(experiment):
    steps = _steps(experiment)
    for stage in ("sft", "dpo"):
        cfg = steps[stage]
        assert cfg.data.source == TRAINED_ROWS[experiment]
        assert (cfg.data.sample_size, cfg.data.sample_seed, cfg.data.stratify_by) == (5000, 0, "category"), stage
        assert list(cfg.leakage.required) == ["release_test_set"]
        assert "release_test_set" in cfg.leakage.sets and str(cfg.leakage.sets.release_test_set.path).endswith("test_set.csv")
        assert cfg.data.revision == DATA_REVISIONS[cfg.data.source]
        assert cfg.model.revision == ALPACA_NATIVE
    assert steps["sft"].model.path == "chavinlo/alpaca-native"


def test_unmatched_rows_stay_possible_by_config():
    steps = _steps("paper_hh_rlhf", "paper.pairs=null", "paper.seed=3")
    assert steps["sft"].data.sample_size is None and steps["dpo"].data.sample_seed == 3


def test_release_row_reads_every_category_and_holds_out_the_test_set():
    # DPO then drops the rows without `rejected` (illegal, nsfw: tests/data/test_fair_rows.py) before its draw
    for stage in ("sft", "dpo"):
        cfg = _steps("paper_release")[stage]
        assert list(cfg.data.categories) == ["hate", "illegal", "nsfw", "self-harm"] and cfg.data.hold_out_test is True


def test_reversed_model_base_is_pinned():
    cfg = _steps("paper_safer_instruct")["reverse"]
    assert cfg.model.path == "huggyllama/llama-7b" and cfg.model.revision == "8416d3fefb0cb3ff5775a7b13c1692d10ff1aa16"
    assert list(cfg.leakage.required) == ["release_test_set"]  # the reversed model never learns a test prompt either
