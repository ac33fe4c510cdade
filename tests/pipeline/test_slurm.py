"""On a real Slurm cluster (the localhost one `bash slurm/ci/up.sh` starts): chains and sweeps.

Skipped with a reason when `sbatch` is not on PATH or the controller does not answer.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time

import pytest

from safer_instruct.pipeline.state import MARKER
from tests.helpers.slurm import cluster_problem
from tests.pipeline.helpers import assert_smoke_beta_sweep, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


_problem = cluster_problem()
if _problem:
    pytestmark.append(pytest.mark.skip(reason=_problem))


def sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """JobID -> State, Start, End, Dependency-free facts from the accounting database (polled)."""
    for _ in range(50):
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State,Start,End", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows = {}
        for line in out.stdout.splitlines():
            job_id, name, state, start, end = line.split("|")
            rows[job_id] = {"name": name, "state": state.split()[0], "start": start, "end": end}
        if set(job_ids) <= set(rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"sacct never listed {job_ids}")


@pytest.fixture(scope="module")
def slurm_smoke(tmp_path_factory):
    """The smoke chain submitted to Slurm, waited for (the sweep test below builds on it)."""
    base = tmp_path_factory.mktemp("slurm-smoke")
    exp = base / "exp"
    out = run_cli("run", "experiment=smoke", "launcher=slurm", "launcher.wait=true", "launcher.poll_s=2",
                  f"out_dir={exp}", f"cache.dir={base / 'llm'}", timeout=900)  # fmt: skip
    return {"exp": exp, "out": out, "cache": base / "llm"}


def test_smoke_chain_runs_through_sbatch_with_afterok(slurm_smoke):
    exp, out = slurm_smoke["exp"], slurm_smoke["out"]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = json.loads((exp / "slurm" / "jobs.json").read_text())["jobs"]
    plan = json.loads((exp / "experiment.json").read_text())["steps"]
    assert set(jobs) == set(plan)
    rows = sacct(list(jobs.values()))
    assert {rows[j]["state"] for j in jobs.values()} == {"COMPLETED"}
    # afterok held: no job started before every job it needs had ended.
    for step, info in plan.items():
        for dep in info["needs"]:
            assert rows[jobs[step]]["start"] >= rows[jobs[dep]]["end"], (step, dep)
        assert (exp / info["dir"].removeprefix(str(exp) + "/") / MARKER).exists()
    with open(exp / "report" / "report.csv", newline="") as handle:
        assert {"base", "dpo"} <= {row["model"] for row in csv.DictReader(handle)}
    assert "Report:" in out.stdout


def test_a_job_whose_dependency_failed_is_cancelled(tmp_path):
    exp = tmp_path / "exp"
    # The reversed-tuning data file does not exist: the first job fails at run time.
    out = run_cli("run", "experiment=smoke", "launcher=slurm", "launcher.wait=true", "launcher.poll_s=1",
                  f"out_dir={exp}", "+experiment.steps.reverse.args.data.path=/nonexistent/data.jsonl",
                  "skip=[harmless_base,downstream_base]", "experiment.steps.report.args.runs=['@{dpo_model}']",
                  timeout=600)  # fmt: skip
    assert out.returncode == 1
    assert "reverse FAILED" in out.stderr
    jobs = json.loads((exp / "slurm" / "jobs.json").read_text())["jobs"]
    rows = sacct(list(jobs.values()))
    assert rows[jobs["reverse"]]["state"] == "FAILED"
    for step in ("construct", "sft", "dpo", "harmless_dpo", "downstream_dpo", "report"):
        assert rows[jobs[step]]["state"] == "CANCELLED", step
    queue = subprocess.run(["squeue", "-h", "-j", ",".join(jobs.values())], capture_output=True, text=True)
    assert queue.stdout.strip() == ""  # nothing left pending
    assert not (exp / "construct" / MARKER).exists()


def test_submitit_sweep_of_two_points_comes_back_in_one_report(slurm_smoke, tmp_path):
    assert slurm_smoke["out"].returncode == 0, "needs the finished smoke chain"
    exp = tmp_path / "exp"
    # Two points of train.beta, each a Slurm job; the steps beta does not change come from the chain
    # above (reuse=), so each point trains and evaluates only its own DPO model.
    out = run_cli("run", "-m", "experiment=smoke", f"out_dir={exp}", f"cache.dir={slurm_smoke['cache']}",
                  f"reuse=[{slurm_smoke['exp']}]", "train.beta=0.05,0.5", "hydra/launcher=submitit_slurm",
                  "hydra.launcher.timeout_min=15", "hydra.launcher.cpus_per_task=1", timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sweep = exp / "sweep"
    points = sorted(json.loads(p.read_text())["overrides"] for p in sweep.glob("*/sweep_point.json"))
    assert [[o for o in p if o.startswith("train.beta")] for p in points] == [["train.beta=0.05"], ["train.beta=0.5"]]
    # Each point ran as a Slurm job (submitit's logs), and trained with its own beta.
    assert len(list(sweep.glob(".submitit/*_0/*_log.out"))) == 1 and len(list(sweep.glob(".submitit/*_1/*_log.out"))) == 1
    assert_smoke_beta_sweep(sweep, out.stdout)


def test_a_job_requeued_near_its_time_limit_starts_again_and_completes(tmp_path):
    exp = tmp_path / "exp"
    only = "downstream_base"
    others = ["reverse", "construct", "sft", "dpo", "harmless_base", "harmless_dpo", "downstream_dpo", "report"]
    out = run_cli("run", "experiment=smoke", "launcher=slurm", f"out_dir={exp}", f"skip=[{','.join(others)}]",
                  "experiment.report_step=null")  # fmt: skip
    assert out.returncode == 0, out.stderr
    job = json.loads((exp / "slurm" / "jobs.json").read_text())["jobs"][only]
    log = exp / "base_model" / only / f"slurm-{job}.out"
    deadline = time.monotonic() + 120
    while not (log.exists() and "(restart 0)" in log.read_text()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    # What Slurm sends before the time limit (--signal=B:USR1@...): the job script requeues itself.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    # Slurm holds a requeued job for about two minutes before it may start again: lift that here, but
    # not at once: started again within a second or so of the requeue, the job is refused by slurmd
    # ("Job credential revoked": the previous run's credential) and fails.
    pending_since = None
    while "restart 1" not in log.read_text():
        state = subprocess.run(["squeue", "-h", "-o", "%T %r", "-j", job], capture_output=True, text=True).stdout
        if state.startswith("PENDING"):
            pending_since = pending_since or time.monotonic()
            if time.monotonic() - pending_since > 5:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        assert time.monotonic() < deadline + 60, state
        time.sleep(0.5)
    while True:
        state = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job], capture_output=True, text=True)
        if state.stdout.strip().split("\n")[-1].startswith("COMPLETED"):
            break
        assert time.monotonic() < deadline + 120, state.stdout
        time.sleep(0.5)
    text = log.read_text()
    assert "time limit near: requeueing" in text and "(restart 1)" in text
    assert (exp / "base_model" / only / MARKER).exists()
    assert json.loads((exp / "base_model" / only / "downstream.json").read_text())["scores"]
