"""The plan of an experiment: override syntax, dependency graph, each step's config, fingerprints, early errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from safer_instruct.config import compose, to_plain
from safer_instruct.errors import ConfigError
from safer_instruct.pipeline.plan import (
    build_plan,
    hydra_value,
    step_config,
    validate,
    write_config,
)


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
    # The step's process reads its saved config; its settings are what composed that config.
    command = plan.command("ds_sft")
    assert command == ["eval", "downstream", f"--config-path={tmp_path / 'ds_sft'}", "--config-name=config",
                       "hydra.run.dir=${out_dir}"]  # fmt: skip
    overrides = plan.overrides("ds_sft")
    assert f"model.path={tmp_path / 'sft'}/model" in overrides
    assert overrides[-1] == f"out_dir={tmp_path / 'ds_sft'}"
    assert "tracking.group=unit" in overrides and "seed=42" in overrides
    runs = next(a for a in plan.overrides("report") if a.startswith("runs="))
    assert str(tmp_path / "ds_base") in runs and str(tmp_path / "ds_sft") in runs
    config = step_config(plan, "ds_sft")
    assert (config.model.path, config.out_dir, config.label) == (f"{tmp_path / 'sft'}/model", str(tmp_path / "ds_sft"), "sft")
    assert list(step_config(plan, "report").runs) == [str(tmp_path / "ds_base"), str(tmp_path / "ds_sft")]


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
    validate(plan)  # the real stage configs accept every setting
    # Planning composes every step's config: a bad key or a missing value fails there, naming the step.
    with pytest.raises(ConfigError, match=r"step 'sft' \(train sft\).*max_stepz"):
        validate(build_plan(chain_cfg(sft={"args": {"train": {"max_stepz": 2}}}), tmp_path))
    with pytest.raises(ConfigError, match=r"step 'lonely' \(report\): missing required config value\(s\): runs"):
        validate(build_plan(chain_cfg(lonely={"stage": "report", "outputs": ["report.md"]}), tmp_path))
    with pytest.raises(ConfigError, match=r"step 'sft' \(train sft\): train.max_steps expects a number, got 'two'"):
        build_plan(chain_cfg(sft={"args": {"train": {"max_steps": "two"}}}), tmp_path)


def test_disabled_steps_leave_the_plan(tmp_path):
    cfg = chain_cfg(ds_base={"enabled": False}, report={"args": {"runs": ["@{ds_sft}"]}})
    plan = build_plan(cfg, Path(tmp_path))
    assert "ds_base" not in plan.steps and plan.steps["report"].deps == ("ds_sft",)


def test_a_steps_config_is_what_hydra_composes_from_its_overrides_and_is_saved_resolved(tmp_path):
    cfg = compose("run", ["experiment=smoke", "dry_run=true"])
    plan = build_plan(cfg, tmp_path)
    for name, step in plan.steps.items():
        assert to_plain(step_config(plan, name)) == to_plain(compose(step.config_name, plan.overrides(name))), name
    saved = OmegaConf.load(write_config(plan, "dpo"))
    assert saved.model.path == f"{tmp_path / 'sft'}/model" and saved.out_dir == str(tmp_path / "dpo")
    assert saved.train.max_steps == 2 and "${" not in OmegaConf.to_yaml(saved)  # resolved, no interpolation left


def test_a_secret_in_a_steps_config_is_refused_not_written(tmp_path):
    plan = build_plan(chain_cfg(sft={"overrides": ["+tracking.api_key=sk-123"]}), tmp_path)
    with pytest.raises(ConfigError, match=r"step 'sft'.*secret at tracking.api_key"):
        validate(plan)
    assert not (tmp_path / "sft" / "config.yaml").exists()


@pytest.mark.parametrize("experiment", ["paper_hh_rlhf", "paper_pku_saferlhf", "paper_release", "paper_safer_instruct"])
def test_beta_comes_from_the_train_preset_unless_the_run_sets_it_for_the_step(tmp_path, experiment):
    """One place decides each hyperparameter: the dpo step's beta is its train preset's
    (conf/train/dpo_paper.yaml), and `+step_args.dpo.train.beta=...` of a run changes it, and its fingerprint."""
    rows = ["paper.sharegpt_path=/data/sharegpt.json", "paper.corpus_path=/data/texts.jsonl"]
    base = ["dry_run=true", *(rows if experiment == "paper_safer_instruct" else [])]
    preset = compose("train_dpo", ["model=tiny", "train=dpo_paper"]).train.beta
    plan = build_plan(compose("run", [f"experiment={experiment}", *base]), tmp_path)
    assert step_config(plan, "dpo").train.beta == preset
    swept = build_plan(compose("run", [f"experiment={experiment}", *base, "+step_args.dpo.train.beta=0.37"]), tmp_path)
    assert step_config(swept, "dpo").train.beta == 0.37
    assert step_config(swept, "dpo").train.learning_rate == step_config(plan, "dpo").train.learning_rate
    assert swept.steps["dpo"].fingerprint != plan.steps["dpo"].fingerprint
    assert swept.steps["sft"].fingerprint == plan.steps["sft"].fingerprint


def test_a_changed_train_preset_reaches_the_step(tmp_path, monkeypatch):
    """Setting beta in conf/train/dpo_paper.yaml changes the beta the dpo step runs with."""
    import shutil

    import safer_instruct.paths as paths

    conf = tmp_path / "conf"
    shutil.copytree(paths.CONF_DIR, conf)
    preset = conf / "train" / "dpo_paper.yaml"
    text = preset.read_text()
    assert "\nbeta:" not in text  # the preset leaves beta to TRL's default (0.1): setting it is a change
    preset.write_text(text + "beta: 0.42\n")
    monkeypatch.setattr(paths, "CONF_DIR", conf)
    plan = build_plan(compose("run", ["experiment=paper_hh_rlhf", "dry_run=true"]), tmp_path / "exp")
    assert step_config(plan, "dpo").train.beta == 0.42


def test_step_args_name_known_steps(tmp_path):
    cfg = chain_cfg()
    cfg.step_args = {"nope": {"label": "x"}}
    with pytest.raises(ConfigError, match=r"step_args: unknown step\(s\) nope"):
        build_plan(cfg, tmp_path)
