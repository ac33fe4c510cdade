"""The demo's plan: its SFT and DPO data add a slice of the published release where the release can be read,
and go on without it, saying so in one line, where it cannot (no local copy, none in the cache, offline);
SFT also trains on the bundled benign instructions."""

from __future__ import annotations

import logging

from safer_instruct import paths
from safer_instruct.config import compose
from safer_instruct.data.sources import spec_from
from safer_instruct.pipeline.plan import build_plan, step_config

BENIGN_INSTRUCTIONS = {"source": "instructions", "path": "demo", "weight": 1.0}


def demo_plan(tmp_path):
    plan = build_plan(compose("run", ["experiment=demo"]), tmp_path / "demo")
    return plan, step_config(plan, "dpo"), step_config(plan, "harmless_dpo")


def test_demo_dpo_trains_on_the_constructed_pairs_and_a_release_slice(tmp_path, monkeypatch):
    release = tmp_path / "release"
    release.mkdir()
    (release / "safer_instruct_hate.csv").write_text("instruction,rejected,chosen,label\n")
    monkeypatch.setenv(paths.RELEASE_ENV, str(release))
    plan, dpo, evaluation = demo_plan(tmp_path)
    components = [dict(c) for c in dpo.data.components]
    assert components == [
        {"source": "constructed", "path": str(plan.exp_dir / "construct")},
        {"source": "safer_instruct_release", "path": str(release), "categories": ["hate", "self-harm"],
         "sample_size": 32, "sample_seed": 0},
    ]  # fmt: skip
    spec = spec_from(dpo.data)  # a valid mixture: every component's keys known
    assert spec.source == "mixture" and len(spec.components) == 2
    assert (dpo.model.max_length, dpo.model.max_prompt_length, dpo.train.max_steps) == (96, 48, 10)
    assert dpo.train.learning_rate == 1e-3 and dpo.model.path == str(plan.exp_dir / "sft" / "model")
    sft = step_config(plan, "sft")
    assert [dict(c) for c in sft.data.components] == [BENIGN_INSTRUCTIONS, *components]
    assert spec_from(sft.data).source == "mixture"
    assert (sft.model.max_length, sft.train.max_steps, sft.train.learning_rate) == (96, 34, 1e-3)
    construct = step_config(plan, "construct")  # induction seeded, one request at a time: the same pairs every run
    assert (construct.inducer.seed, construct.inducer.max_concurrency, construct.inducer.temperature > 0) == (
        construct.seed, 1, True)  # fmt: skip
    assert evaluation.training_data == ("constructed (demo) + 32 release pairs (hate, self-harm); SFT also on benign "
                                        "instructions")  # fmt: skip
    assert (evaluation.prompts.name, evaluation.prompts.limit) == ("harmbench", 24)
    benign = step_config(plan, "answer_dpo_benign")
    assert (benign.prompts.name, benign.prompts.limit, benign.label) == ("benign_v1", 24, evaluation.label)


def test_demo_without_the_release_says_so_once_and_plans_no_slice(tmp_path, monkeypatch, caplog):
    """No copy of the release (the named folder is missing) and the hub offline: one line, no slice; either
    way each model answers the harmful prompts (the 135M LLM judge and the refusal judge beside it) and the
    benign ones (the refusal judge: the answer rate), which the report's first lines compare."""
    missing = tmp_path / "no-release-here"
    monkeypatch.setenv(paths.RELEASE_ENV, str(missing))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.INFO, logger="safer_instruct.paths")
    plan, dpo, evaluation = demo_plan(tmp_path)
    constructed = {"source": "constructed", "path": str(plan.exp_dir / "construct")}
    assert [dict(c) for c in dpo.data.components] == [constructed]
    assert [dict(c) for c in step_config(plan, "sft").data.components] == [BENIGN_INSTRUCTIONS, constructed]
    assert evaluation.training_data == "constructed (demo); SFT also on benign instructions"
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"Safer-Instruct release not found: $SAFER_INSTRUCT_RELEASE names {missing}, which has no "
                    "safer_instruct_<category>.csv files: going on without it (the demo: SFT and DPO without its "
                    "release slice)"]  # fmt: skip

    groups = {name: step.group for name, step in plan.steps.items() if step.stage == ("eval", "harmlessness")}
    assert groups == {"harmless_base": "base_model", "answer_base_benign": "base_model",
                      "harmless_dpo": "dpo_model", "answer_dpo_benign": "dpo_model"}  # fmt: skip
    for name in ("harmless_base", "harmless_dpo"):
        cfg = step_config(plan, name)
        assert (cfg.judge.model, cfg.judge.max_tokens, cfg.second_judge.kind) == ("kit:smollm2-135m", 64, "refusal")
    for name in ("answer_base_benign", "answer_dpo_benign"):
        cfg = step_config(plan, name)
        assert cfg.judge.kind == "refusal" and cfg.get("second_judge") is None
    assert step_config(plan, "report").runs[:2] == [str(plan.exp_dir / "base_model"), str(plan.exp_dir / "dpo_model")]
