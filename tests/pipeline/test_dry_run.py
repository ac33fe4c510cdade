"""`safer-instruct run ... dry_run=true`: a bash script of what would run, with the right graph."""

from __future__ import annotations

import re

import pytest

from tests.pipeline.helpers import bash_syntax_ok, job_scripts, run_cli, sbatch_graph

# The smoke chain: reverse -> construct -> sft -> dpo -> evaluations -> report.
SMOKE_GRAPH = {
    "reverse": set(),
    "construct": {"reverse"},
    "sft": {"construct"},
    "dpo": {"sft", "construct"},
    "harmless_base": set(),
    "harmless_dpo": {"dpo"},
    "downstream_base": set(),
    "downstream_dpo": {"dpo"},
    "report": {"harmless_base", "downstream_base", "harmless_dpo", "downstream_dpo", "dpo"},
}


def test_local_dry_run_is_bash_running_each_stage_in_dependency_order(tmp_path):
    out = run_cli("run", "experiment=smoke", f"out_dir={tmp_path / 'exp'}", "dry_run=true")
    assert out.returncode == 0, out.stderr
    assert bash_syntax_ok(out.stdout).returncode == 0, bash_syntax_ok(out.stdout).stderr
    commands = re.findall(r"^safer-instruct (\w+(?: \w+)?) \\$", out.stdout, re.M)
    assert commands == ["train reverse", "construct", "train sft", "train dpo", "eval harmlessness",
                        "eval harmlessness", "eval downstream", "eval downstream", "report"]  # fmt: skip
    assert f"out_dir={tmp_path / 'exp' / 'dpo'}" in out.stdout
    assert f"model.path={tmp_path / 'exp' / 'sft'}/model" in out.stdout  # the dpo step reads the sft model
    assert not (tmp_path / "exp" / "reverse").exists()  # nothing ran


def test_slurm_dry_run_has_the_dependency_graph_and_the_configured_resources(tmp_path):
    out = run_cli(
        "run", "experiment=smoke", f"out_dir={tmp_path / 'exp'}", "dry_run=true", "launcher=slurm",
        "launcher.partition=gpu", "launcher.account=lab", "experiment.resources.train.nodes=2",
        "experiment.resources.train.gpus_per_node=4", "experiment.resources.eval.time=00:30:00",
        "+experiment.steps.construct.resources.shards=3",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert bash_syntax_ok(out.stdout).returncode == 0, bash_syntax_ok(out.stdout).stderr
    graph = sbatch_graph(out.stdout)
    # The sharded construct step: its induction array first, then the construct job after it.
    assert graph.pop("construct_induce") == {"reverse"}
    assert graph.pop("construct") == {"reverse", "construct_induce"}
    assert graph == {k: v for k, v in SMOKE_GRAPH.items() if k != "construct"}
    scripts = job_scripts(out.stdout)
    assert set(scripts) == {*SMOKE_GRAPH, "construct.induce"}
    for name, script in scripts.items():
        assert bash_syntax_ok(script).returncode == 0, name
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --account=lab" in script
        assert "#SBATCH --requeue" in script
    for name in ("reverse", "sft", "dpo"):  # training: srun + accelerate launch across the nodes
        assert "#SBATCH --nodes=2" in scripts[name] and "#SBATCH --gpus-per-node=4" in scripts[name]
        assert re.search(r'LAUNCH="accelerate launch.*--machine_rank \\\$SLURM_PROCID', scripts[name], re.S)
        assert 'srun --nodes="$NUM_NODES" --ntasks="$NUM_NODES" --ntasks-per-node=1 bash -c "$LAUNCH"' in scripts[name]
        assert f"export SAFER_INSTRUCT_SCRIPT=train/{name}.py" in scripts[name]
    assert "#SBATCH --time=00:30:00" in scripts["harmless_dpo"]
    assert "#SBATCH --nodes=1" in scripts["report"] and "gpus-per-node" not in scripts["report"]
    assert "#SBATCH --array=0-2%3" in scripts["construct.induce"]
    assert "safer_instruct.pipeline.shards induce" in scripts["construct.induce"]


@pytest.mark.parametrize(
    ("experiment", "extra", "trained"),
    [
        ("paper_alpaca", [], False),
        ("paper_hh_rlhf", [], True),
        ("paper_pku_saferlhf", [], True),
        ("paper_release", [], True),
        ("paper_safer_instruct", ["paper.sharegpt_path=/data/sharegpt.json", "paper.corpus_path=/data/texts.jsonl"], True),
    ],
)
def test_each_paper_row_is_one_command(tmp_path, experiment, extra, trained):
    out = run_cli("run", f"experiment={experiment}", f"out_dir={tmp_path}", "dry_run=true", "launcher=slurm", *extra)
    assert out.returncode == 0, out.stdout + out.stderr
    assert bash_syntax_ok(out.stdout).returncode == 0
    graph = sbatch_graph(out.stdout)
    assert graph["report"] == {"harmless", "downstream"}
    scripts = job_scripts(out.stdout)
    # Claude 3 judges first (the paper's figures were judged by it), GPT-4 second (rates side by side, kappa).
    assert "judge=claude3" in scripts["harmless"] and "judge@second_judge=gpt4" in scripts["harmless"]
    assert "prompt_set=release_test_set" in scripts["harmless"]
    if trained:
        assert graph["dpo"] >= {"sft"} and graph["harmless"] == {"dpo"}
        assert f"model.path={tmp_path}/dpo/model" in scripts["harmless"]
        assert "train=dpo_paper" in scripts["dpo"] and "#SBATCH --gpus-per-node=8" in scripts["dpo"]
    else:
        assert graph["harmless"] == set() and "model.path=chavinlo/alpaca-native" in scripts["harmless"]


def test_paper_safer_instruct_names_its_missing_inputs(tmp_path):
    out = run_cli("run", "experiment=paper_safer_instruct", f"out_dir={tmp_path}", "dry_run=true")
    assert out.returncode == 2
    assert "paper.corpus_path" in out.stderr and "paper.sharegpt_path" in out.stderr


def test_a_bad_step_override_fails_before_anything_runs(tmp_path):
    out = run_cli("run", "experiment=smoke", f"out_dir={tmp_path}", "+experiment.steps.dpo.args.train.betta=0.2")
    assert out.returncode == 1
    assert "step 'dpo' (train dpo)" in out.stderr and "betta" in out.stderr
    assert not (tmp_path / "reverse").exists()
