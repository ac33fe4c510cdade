"""Running `safer-instruct run` as a user would, and reading what it printed and wrote."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SBATCH_LINE = re.compile(r"^jid_(\w+)=\$\(sbatch (.*) \| cut")


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`safer-instruct ARGS` in a fresh process from the project root."""
    return subprocess.run(
        [sys.executable, "-m", "safer_instruct.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


def bash_syntax_ok(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)


def sbatch_graph(script: str) -> dict[str, set[str]]:
    """job variable -> the job variables it waits for (afterok), read from a Slurm dry-run script."""
    graph = {}
    for line in script.splitlines():
        match = SBATCH_LINE.match(line)
        if match:
            dep = re.search(r"--dependency=afterok:(\S+)", match.group(2))
            graph[match.group(1)] = set(re.findall(r"\$\{jid_(\w+)\}", dep.group(1))) if dep else set()
    return graph


def job_scripts(script: str) -> dict[str, str]:
    """Job file name -> the job script embedded in a Slurm dry-run script (heredocs)."""
    found = dict(re.findall(r"cat > \S*/slurm/(\S+)\.sbatch <<'SAFER_INSTRUCT_JOB'\n(.*?)\nSAFER_INSTRUCT_JOB", script, re.S))
    return found


def assert_smoke_beta_sweep(sweep: Path, stdout: str) -> None:
    """A `run -m experiment=smoke train.beta=0.05,0.5` sweep (points 0 and 1): each point's DPO trained with
    its own beta, the steps beta does not touch reused, and one report table: the base model once (the
    same steps in both points), the trained model per point, harmlessness and downstream results together."""
    import csv

    from safer_instruct.pipeline.state import is_reused

    for n, beta in ((0, 0.05), (1, 0.5)):
        assert f"beta: {beta}" in (sweep / str(n) / "dpo" / "config.yaml").read_text()
        assert not is_reused(sweep / str(n) / "dpo")
        for shared in ("reverse", "construct", "sft", "base_model/harmless_base"):
            assert is_reused(sweep / str(n) / shared), (n, shared)
    with open(sweep / "report" / "report.csv", newline="") as handle:
        rows = [(row["run"].split("/")[0], row["model"]) for row in csv.DictReader(handle)]
    assert sorted(rows) == [("base_model", "base"), ("train.beta=0.05 dpo_model", "dpo"), ("train.beta=0.5 dpo_model", "dpo")]
    assert f"sweep of 2 points: {sweep / 'report' / 'report.md'}" in stdout
