"""The plan of an experiment: override syntax, dependency graph, fingerprints, early errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from safer_instruct.errors import ConfigError
from safer_instruct.pipeline.plan import build_plan, hydra_value, validate


@pytest.mark.parametrize(
    "value",
    [
        "plain", "with space", "a,b", "it's", 'say "hi"', "{braces}", "${not.interp}", "back\\slash'",
        "0.1", "true", "null", "", "/abs/path/model", "kit:tiny", "[x]", 3, 0.5, 1e-7, True, None,
        ["a b", 1, [2, "c,d"]], {"k": "v w", "n": 2},
    ],
)  # fmt: skip
def test_hydra_value_parses_back_to_the_same_value(value):
    parsed = OverridesParser.create().parse_override(f"key={hydra_value(value)}").value()
    assert parsed == value
    assert type(parsed) is type(value)


def chain_cfg(**step_overrides):
    """A four-step experiment over stages that exist: two evaluations feed a report."""
    steps = {
        "ds_base": {"stage": "eval downstream", "args": {"model": "tiny", "label": "base"}, "outputs": ["downstream.json"]},
        "sft": {"stage": "train sft", "args": {"model": "tiny", "train": {"max_steps": 2}}, "outputs": ["model"]},
        "ds_sft": {"stage": "eval downstream", "args": {"model": "tiny", "model.path": None, "label": "sft"},
                   "overrides": ["model.path=@{sft}/model"], "outputs": ["downstream.json"]},
        "report": {"stage": "report", "args": {"runs": ["@{ds_base}", "@{ds_sft}"]}, "outputs": ["report.md"]},
    }  # fmt: skip
    for name, change in step_overrides.items():
        steps[name] = OmegaConf.to_container(OmegaConf.merge(steps.get(name, {}), change))
    return OmegaConf.create(
        {
            "seed": 42,
            "cache": {"dir": "/tmp/llm-cache"},
            "tracking": {"mode": "disabled", "project": "p", "entity": None, "group": None},
            "experiment": {"name": "unit", "report_step": "report", "steps": steps},
        }
    )


def test_dependencies_come_from_step_references_and_order_is_topological(tmp_path):
    cfg = chain_cfg()
    # Declared report-first: the plan still runs it last.
    cfg.experiment.steps = {"report": cfg.experiment.steps.report, **{k: v for k, v in cfg.experiment.steps.items() if k != "report"}}
    plan = build_plan(cfg, tmp_path)
    assert list(plan.steps) == ["ds_base", "sft", "ds_sft", "report"]
    assert set(plan.edges()) == {("sft", "ds_sft"), ("ds_base", "report"), ("ds_sft", "report")}
    command = plan.command("ds_sft")
    assert command[:2] == ["eval", "downstream"]
    assert f"model.path={tmp_path / 'sft'}/model" in command
    assert command[-1] == f"out_dir={tmp_path / 'ds_sft'}"
    assert "tracking.group=unit" in command and "seed=42" in command
    runs = next(a for a in plan.command("report") if a.startswith("runs="))
    assert str(tmp_path / "ds_base") in runs and str(tmp_path / "ds_sft") in runs


def test_fingerprint_changes_downstream_only_and_not_with_the_experiment_dir(tmp_path):
    base = build_plan(chain_cfg(), tmp_path / "a")
    moved = build_plan(chain_cfg(), tmp_path / "b")
    assert {n: s.fingerprint for n, s in base.steps.items()} == {n: s.fingerprint for n, s in moved.steps.items()}
    changed = build_plan(chain_cfg(sft={"args": {"train": {"max_steps": 3}}}), tmp_path / "a")
    differs = {n for n in base.steps if base.steps[n].fingerprint != changed.steps[n].fingerprint}
    assert differs == {"sft", "ds_sft", "report"}
    reseeded = chain_cfg()
    reseeded.seed = 7
    assert all(build_plan(reseeded, tmp_path).steps[n].fingerprint != base.steps[n].fingerprint for n in base.steps)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ds_sft": {"overrides": ["model.path=@{nope}/model"]}}, "refers to unknown step 'nope'"),
        ({"sft": {"after": ["report"]}}, "cycle"),
        ({"sft": {"stage": "train nonsense"}}, "unknown stage 'train nonsense'"),
        ({"sft": {"enabled": False}}, "needs step 'sft', which is disabled"),
        ({"sft": {"outputz": ["x"]}}, "unknown key(s) outputz"),
    ],
)
def test_bad_experiments_fail_naming_the_step(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_plan(chain_cfg(**change), tmp_path)


def test_validate_composes_each_step_and_names_the_bad_key(tmp_path):
    plan = build_plan(chain_cfg(), tmp_path)
    validate(plan)  # the real stage configs accept every override
    bad = build_plan(chain_cfg(sft={"args": {"train": {"max_stepz": 2}}}), tmp_path)
    with pytest.raises(ConfigError, match=r"step 'sft' \(train sft\).*max_stepz"):
        validate(bad)
    missing = build_plan(chain_cfg(lonely={"stage": "report", "outputs": ["report.md"]}), tmp_path)
    with pytest.raises(ConfigError, match=r"step 'lonely' \(report\): missing required config value\(s\): runs"):
        validate(missing)


def test_disabled_steps_leave_the_plan(tmp_path):
    cfg = chain_cfg(ds_base={"enabled": False}, report={"args": {"runs": ["@{ds_sft}"]}})
    plan = build_plan(cfg, Path(tmp_path))
    assert "ds_base" not in plan.steps and plan.steps["report"].deps == ("ds_sft",)
