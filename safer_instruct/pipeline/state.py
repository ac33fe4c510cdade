"""Which steps are done: markers written after a stage exits 0, and their declared outputs.

A step is complete when `<step dir>/.step-complete.json` exists with the step's current fingerprint
and every declared output is present. The marker is written only by the runner (or by the job
script on Slurm, through `python -m safer_instruct.pipeline.marker`) after the stage exited 0, so a
crash, a kill or a failed stage leaves no marker and the next run redoes (and the stage resumes) it.

A step dir left by a run with another fingerprint (its config changed since) is moved aside to
`<experiment dir>/.stale/`, never deleted, so that the stage does not resume from foreign state.

Sweep points share steps: `<sweep dir>/.steps/<fingerprint>.json` names the dir of a completed step
with that fingerprint, and a file lock makes a second point wait for the first instead of computing
the same thing twice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

from safer_instruct.io import atomic_write_json

MARKER = ".step-complete.json"
STARTED = ".step-started.json"


def missing_outputs(step_dir: Path, outputs: tuple[str, ...] | list[str]) -> list[str]:
    """Declared outputs (paths or glob patterns, relative to the step dir) that are absent."""
    return [pattern for pattern in outputs if not glob(str(step_dir / pattern))]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_marker(step_dir: Path) -> dict[str, Any] | None:
    return _read_json(step_dir / MARKER)


def is_complete(step_dir: Path, fingerprint: str, outputs: tuple[str, ...]) -> bool:
    marker = read_marker(step_dir)
    return bool(marker) and marker.get("fingerprint") == fingerprint and not missing_outputs(step_dir, outputs)


def write_marker(step_dir: Path, fingerprint: str, **info: Any) -> dict[str, Any]:
    marker = {
        "fingerprint": fingerprint,
        "run_id": uuid.uuid4().hex,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": socket.gethostname(),
        **({"slurm_job_id": os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}),
        **info,
    }
    atomic_write_json(step_dir / MARKER, marker)
    return marker


def move_aside(step_dir: Path, exp_dir: Path) -> Path | None:
    """Move a step dir's contents to `<experiment dir>/.stale/` (a symlink is just removed)."""
    if step_dir.is_symlink():  # a step shared from another sweep point: never touch its target
        step_dir.unlink()
        return None
    if not step_dir.exists():
        return None
    stale_root = exp_dir / ".stale"
    stale_root.mkdir(parents=True, exist_ok=True)
    moved = stale_root / f"{step_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    shutil.move(str(step_dir), moved)
    return moved


def prepare_step_dir(step_dir: Path, fingerprint: str, exp_dir: Path) -> Path | None:
    """Make a step dir ready for a (re)run; move it aside if another fingerprint's run left it.

    Returns where stale contents were moved, or None. A dir left by a failed run with the *same*
    fingerprint stays: the stage resumes from it (checkpoints, LLM caches, partial outputs).
    """
    moved = None
    if is_reused(step_dir):  # never write through links into another sweep point's step
        moved = move_aside(step_dir, exp_dir)
    elif step_dir.exists():
        started = _read_json(step_dir / STARTED) or read_marker(step_dir) or {}
        foreign = started.get("fingerprint") not in (None, fingerprint)
        unknown = not started and any(step_dir.iterdir())
        if foreign or unknown:
            moved = move_aside(step_dir, exp_dir)
    (step_dir / MARKER).unlink(missing_ok=True)
    step_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(step_dir / STARTED, {"fingerprint": fingerprint, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return moved


def link_reused(step_dir: Path, shared: Path) -> None:
    """Make `step_dir` show a complete step of another sweep point: a real folder of symlinks.

    A folder of links rather than one link to the folder, because tools that search a tree for
    result files (the report) do not descend into linked folders but do see linked files.
    """
    step_dir.mkdir(parents=True, exist_ok=True)
    for entry in shared.iterdir():
        (step_dir / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def is_reused(step_dir: Path) -> bool:
    """True for a step shown by `link_reused` (or the single link of an older run)."""
    return step_dir.is_symlink() or (step_dir / MARKER).is_symlink()


def fingerprints_under(folder: Path) -> frozenset[str]:
    """The fingerprints of every completed step in a folder (a step dir, a group, an experiment)."""
    found = set()
    for marker in folder.rglob(MARKER):
        data = _read_json(marker)
        if data and data.get("fingerprint"):
            found.add(data["fingerprint"])
    return frozenset(found)


@dataclass
class StepRegistry:
    """Completed steps by fingerprint, shared by the points of a sweep (or one experiment).

    `also`: other experiment dirs (`run reuse=[DIR,...]`) whose complete steps may be taken as they
    are, found through their `experiment.json` (and their sweep points').
    """

    root: Path
    also: tuple[Path, ...] = ()

    def _entry(self, fingerprint: str) -> Path:
        return self.root / ".steps" / f"{fingerprint}.json"

    def lock(self, fingerprint: str):
        from filelock import FileLock

        (self.root / ".steps").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".steps" / f"{fingerprint}.lock"))

    def find(self, fingerprint: str, outputs: tuple[str, ...]) -> Path | None:
        entry = _read_json(self._entry(fingerprint))
        if entry and is_complete(Path(entry["dir"]), fingerprint, outputs):
            return Path(entry["dir"])
        for other in self.also:
            for plan_file in [other / "experiment.json", *sorted(other.glob("sweep/*/experiment.json"))]:
                steps = (_read_json(plan_file) or {}).get("steps", {})
                for step in steps.values():
                    if step.get("fingerprint") == fingerprint and is_complete(Path(step["dir"]), fingerprint, outputs):
                        return Path(step["dir"])
        return None

    def register(self, fingerprint: str, step_dir: Path) -> None:
        (self.root / ".steps").mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._entry(fingerprint), {"dir": str(step_dir.resolve())})
