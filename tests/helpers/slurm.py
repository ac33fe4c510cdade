"""Whether a usable Slurm cluster is here (the localhost one `bash slurm/ci/up.sh` starts)."""

from __future__ import annotations

import shutil
import subprocess


def cluster_problem() -> str | None:
    """None when `sbatch`/`srun` exist and the controller answers; otherwise why the tests skip."""
    for command in ("sbatch", "srun", "scontrol"):
        if shutil.which(command) is None:
            return f"{command} is not on PATH (start the localhost cluster with `bash slurm/ci/up.sh`)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the Slurm controller did not answer `scontrol ping` within 30 s"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        first_line = (ping.stdout + ping.stderr).strip().splitlines()[:1]
        return f"the Slurm controller does not answer ({' '.join(first_line)})"
    return None
