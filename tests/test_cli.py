"""The command line: stage listing, and one-line errors before anything heavy is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from safer_instruct.stages import STAGES


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter and report whether torch got imported."""
    code = (
        "import sys; from safer_instruct.cli import main; rc = main(sys.argv[1:]); "
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH'); sys.exit(rc)"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_built_stage_with_its_help():
    proc = subprocess.run([sys.executable, "-m", "safer_instruct.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for stage in STAGES:
        line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(stage.name + " "))
        assert stage.help in line
    assert "train sft" in proc.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fly"], "unknown stage 'fly'"),
        (["train", "fly"], "unknown stage 'train fly'"),
        (["train"], "'train' needs a sub-stage"),
        (["train", "sft", "model=tiny", "train.no_such_knob=3"], "no_such_knob"),
        (["train", "sft", "model=no_such_model"], "no_such_model"),
        (["train", "sft"], "model"),
        (["train", "sft", "model=tiny", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_stage_or_override_is_one_line_and_loads_nothing(args, expected):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("safer-instruct: error: ") and expected in errors[0]
    assert "NO_TORCH" in proc.stdout  # rejected before torch, transformers or a model were imported


def test_sweep_overrides_are_checked_with_their_first_value():
    proc = run_cli("train", "sft", "-m", "model=tiny", "train.no_such_knob=1,2")
    assert proc.returncode == 2 and "no_such_knob" in proc.stderr and "NO_TORCH" in proc.stdout


def test_wrongly_typed_value_and_unknown_option_errors_are_helpful():
    proc = run_cli("train", "sft", "model=tiny", "train.max_steps=ten")
    assert proc.returncode == 2
    assert "train.max_steps expects a number, got 'ten'" in proc.stderr
    proc = run_cli("train", "sft", "model=no_such_model")
    assert "Available options in 'model': " in proc.stderr and "smollm2-135m, tiny" in proc.stderr


def test_a_saved_config_is_what_the_stage_checks_before_anything_loads(tmp_path):
    """`--config-path DIR --config-name config` (how `safer-instruct run` starts a step): the saved file is checked."""
    (tmp_path / "config.yaml").write_text("stage: report\nruns: ???\ntitle: t\nout_dir: /tmp/x\n")
    proc = run_cli("report", f"--config-path={tmp_path}", "--config-name=config", "hydra.run.dir=${out_dir}")
    assert proc.returncode == 2, proc.stderr
    assert "missing required config value(s): runs" in proc.stderr and "NO_TORCH" in proc.stdout
    proc = run_cli("report", f"--config-path={tmp_path}", "--config-name=config", "titel=x")
    assert proc.returncode == 2 and "titel" in proc.stderr and "NO_TORCH" in proc.stdout
    proc = run_cli("report", f"--config-path={tmp_path / 'nowhere'}", "--config-name=config")
    assert proc.returncode == 2 and f"config file {tmp_path / 'nowhere' / 'config.yaml'} not found" in proc.stderr


def test_constructs_old_stages_key_names_its_new_name(tmp_path):
    proc = run_cli("construct", "stages=[induce]", "inducer.model=m", "expert.model=m", f"out_dir={tmp_path}",
                   "tracking.mode=disabled")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "safer-instruct: error: stages=['induce']: construct's units are now called phases; write phases=[...]" in proc.stderr
