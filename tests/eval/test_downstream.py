"""lm-eval on the local offline tasks (conf/lm_eval_tasks) with the tiny model, through the CLI."""

from __future__ import annotations

import json

import pytest
import yaml

from safer_instruct.cli import main as cli
from safer_instruct.errors import ConfigError
from safer_instruct.evaluation.downstream import run_downstream

LOCAL = [
    "harness.include_path=conf/lm_eval_tasks",
    "harness.include_defaults=false",
    "harness.bootstrap_iters=50",
]


def test_downstream_local_tasks_tiny_model(tmp_path, tiny_model):
    out = tmp_path / "chat"
    assert cli(["eval", "downstream", "model=tiny", "tasks=[si_local_mc,si_local_gen]", f"out_dir={out}",
                "harness.limit=6", "training_data=none", *LOCAL]) == 0  # fmt: skip
    result = json.loads((out / "downstream.json").read_text())
    mc, gen = result["scores"]["si_local_mc"], result["scores"]["si_local_gen"]
    assert (mc["metric"], mc["n"]) == ("acc", 6)  # limit reached the harness
    assert (gen["metric"], gen["n"]) == ("exact_match", 4)  # the task has only 4 documents
    assert 0.0 <= mc["value"] <= 1.0 and mc["stderr"] is not None
    assert result["settings"]["chat_template"] is True  # the tiny preset is prompt_format=chat
    assert result["settings"]["max_length"] == 2048  # the model's context (model.context_length), not max_length=256
    assert result["task_versions"] == {"si_local_gen": 1.0, "si_local_mc": 1.0}
    assert result["versions"]["lm_eval"].startswith("0.4") and result["label"] == "tiny"
    raw = json.loads((out / "lm_eval_results.json").read_text())
    assert raw["results"]["si_local_mc"]["acc,none"] == mc["value"] and "samples" not in raw
    assert yaml.safe_load((out / "config.yaml").read_text())["tasks"] == ["si_local_mc", "si_local_gen"]

    # An Alpaca-format preset is evaluated without the chat template.
    alpaca = tmp_path / "alpaca"
    # The harness's context follows model.context_length.
    assert cli(["eval", "downstream", "model=tiny", "model.prompt_format=alpaca", "tasks=[si_local_mc]",
                f"out_dir={alpaca}", "harness.limit=3", "model.context_length=1024", *LOCAL]) == 0  # fmt: skip
    result = json.loads((alpaca / "downstream.json").read_text())
    assert result["settings"]["chat_template"] is False and result["scores"]["si_local_mc"]["n"] == 3
    assert result["settings"]["max_length"] == 1024
    assert list(result["scores"]) == ["si_local_mc"]


def test_unknown_task_fails_before_the_model_loads():
    with pytest.raises(ConfigError, match="unknown lm-eval task.*no_such_task"):
        run_downstream({"path": "/nonexistent/model", "prompt_format": "chat"}, ["no_such_task"],
                       {"include_path": "conf/lm_eval_tasks", "include_defaults": False})  # fmt: skip


def test_missing_model_preset_is_a_config_error(tmp_path):
    assert cli(["eval", "downstream", "tasks=[si_local_mc]", f"out_dir={tmp_path}"]) == 2


@pytest.mark.slow
def test_served_model_generation_task(tmp_path, tiny_model):
    """backend=api without base_url: the tiny model is served on loopback for the run, then stopped."""
    out = tmp_path / "served"
    assert cli(["eval", "downstream", "model=tiny", "tasks=[si_local_gen]", "harness.backend=api",
                "harness.server.device=cpu", f"out_dir={out}", *LOCAL]) == 0  # fmt: skip
    result = json.loads((out / "downstream.json").read_text())
    assert result["settings"]["served"] == "managed loopback server" and result["settings"]["chat_template"]
    assert result["scores"]["si_local_gen"]["n"] == 4


def test_loglikelihood_task_on_a_server_without_logprobs_is_a_clear_error(tmp_path, tiny_model):
    from tests.helpers.servers import FaultServer

    with FaultServer() as server, pytest.raises(ConfigError, match="prompt log-probabilities"):
        run_downstream({"path": tiny_model, "prompt_format": "alpaca"}, ["si_local_mc"],
                       {"backend": "api", "base_url": server.base_url, "served_model": "m", "limit": 2,
                        "include_path": "conf/lm_eval_tasks", "include_defaults": False, "max_retries": 1})  # fmt: skip
