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
