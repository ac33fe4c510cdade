"""`safer-instruct run experiment=smoke`: the whole chain on the tiny model, then reruns.

One real run (module fixture, about a minute or two on 2 cores), then what a user does next: run the
same command again (everything skipped), change one step (only it reruns, old outputs kept aside),
break a step (the chain stops there, the error names it) and fix it (the rerun continues there).
"""

from __future__ import annotations

import csv
import json
import time

import pytest

from safer_instruct.pipeline.state import MARKER
from tests.pipeline.helpers import assert_smoke_beta_sweep, run_cli

pytestmark = pytest.mark.slow

STEPS = ["reverse", "construct", "sft", "dpo", "harmless_base", "harmless_dpo", "downstream_base",
         "downstream_dpo", "report"]  # fmt: skip
STEP_DIRS = {"harmless_base": "base_model/harmless_base", "downstream_base": "base_model/downstream_base",
             "harmless_dpo": "dpo_model/harmless_dpo", "downstream_dpo": "dpo_model/downstream_dpo"}  # fmt: skip
OUTPUTS = {
    "reverse": ["model/config.json", "metrics.jsonl"],
    "construct": ["preference.jsonl", "stats.json", "README.md"],
    "sft": ["model/config.json", "metrics.jsonl"],
    "dpo": ["model/config.json", "metrics.jsonl"],
    "harmless_base": ["harmlessness.json", "judgements.jsonl"],
    "harmless_dpo": ["harmlessness.json", "judgements.jsonl"],
    "downstream_base": ["downstream.json"],
    "downstream_dpo": ["downstream.json"],
    "report": ["report.md", "report.csv"],
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    exp = tmp_path_factory.mktemp("smoke") / "exp"
    args = ("run", "experiment=smoke", f"out_dir={exp}", f"cache.dir={exp.parent / 'llm-cache'}")
    started = time.perf_counter()
    out = run_cli(*args, timeout=900)
    wall = time.perf_counter() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"exp": exp, "args": args, "out": out, "wall": wall}


def step_dir(exp, name):
    return exp / STEP_DIRS.get(name, name)


def test_every_stage_ran_and_left_its_outputs(smoke):
    exp = smoke["exp"]
    for name in STEPS:
        marker = json.loads((step_dir(exp, name) / MARKER).read_text())
        assert marker["wall_s"] > 0
        for output in OUTPUTS[name]:
            assert (step_dir(exp, name) / output).is_file(), f"{name}: {output}"
    # The hand-overs: construct read the reversed model, dpo started from the sft model.
    construct_cfg = (exp / "construct" / "config.yaml").read_text()
    assert f"{exp}/reverse/model" in construct_cfg
    assert f"{exp}/sft/model" in (exp / "dpo" / "config.yaml").read_text()
    assert (exp / "construct" / "preference.jsonl").read_text().strip()
    plan = json.loads((exp / "experiment.json").read_text())
    assert set(plan["steps"]["dpo"]["needs"]) == {"sft", "construct"}


def test_report_has_a_row_for_the_base_and_the_trained_model(smoke):
    exp = smoke["exp"]
    with open(exp / "report" / "report.csv", newline="") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert {"base", "dpo"} <= set(rows)
    for label in ("base", "dpo"):
        assert rows[label]["harmless_n"] == "4"  # harmlessness and downstream in one row per model
        assert rows[label]["si_local_mc_acc"] != ""
    assert rows["dpo"]["training_data"] == "constructed"
    # The terminal ends with the report's path and the short table.
    stdout = smoke["out"].stdout
    assert f"Report: {exp / 'report' / 'report.md'}" in stdout
    assert "| base |" in stdout and "| dpo |" in stdout
    assert (exp / "summary.md").read_text().strip() in stdout


def test_rerun_skips_every_complete_step(smoke):
    exp = smoke["exp"]
    before = {n: (step_dir(exp, n) / MARKER).stat().st_mtime_ns for n in STEPS}
    started = time.perf_counter()
    out = run_cli(*smoke["args"])
    assert out.returncode == 0, out.stderr
    assert time.perf_counter() - started < 30
    assert out.stdout.count("complete, skipped") == len(STEPS)
    assert before == {n: (step_dir(exp, n) / MARKER).stat().st_mtime_ns for n in STEPS}


def test_a_failed_step_stops_the_chain_and_the_rerun_continues_there(smoke):
    exp = smoke["exp"]
    kept = {n: (step_dir(exp, n) / MARKER).stat().st_mtime_ns for n in STEPS if n != "report"}
    old_report = (exp / "report" / "report.md").read_text()
    # A report over a folder that does not exist passes the config check but fails when it runs.
    broken = run_cli(*smoke["args"], f"experiment.steps.report.args.runs=[{exp}/nowhere]")
    assert broken.returncode == 1
    assert "step 'report' (report) failed with exit code" in broken.stderr
    assert "rerun the same command to continue" in broken.stderr
    assert not (exp / "report" / MARKER).exists()
    stale = list((exp / ".stale").glob("report-*"))
    assert [p.joinpath("report.md").read_text() for p in stale] == [old_report]  # moved aside, not lost
    fixed = run_cli(*smoke["args"])
    assert fixed.returncode == 0, fixed.stderr
    assert "[9/9] report (report): running" in fixed.stdout
    assert fixed.stdout.count("complete, skipped") == len(STEPS) - 1
    assert kept == {n: (step_dir(exp, n) / MARKER).stat().st_mtime_ns for n in kept}
    assert (exp / "report" / MARKER).exists()


def test_a_local_sweep_trains_each_point_and_ends_in_one_report(smoke, tmp_path):
    """`-m train.beta=...` on top of the finished chain (reuse=): each point trains and evaluates its own
    DPO model with its own beta, takes every other step from the chain, and one report covers both."""
    exp = smoke["exp"]
    sweep_root = tmp_path / "sweep_exp"
    out = run_cli("run", "-m", "experiment=smoke", f"out_dir={sweep_root}", f"cache.dir={exp.parent / 'llm-cache'}",
                  f"reuse=[{exp}]", "train.beta=0.05,0.5", timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sweep = sweep_root / "sweep"
    assert_smoke_beta_sweep(sweep, out.stdout)
