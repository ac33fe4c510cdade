"""Run an experiment's steps one after another on this machine, each in its own process.

Each step runs its stage as `python -m safer_instruct.cli STAGE --config-path <step dir> --config-name
config`, reading the config the plan saved there: a fresh process per step (its own wandb run, no
state leaking between trainers), output captured in `<step dir>/stage.log`. A step that exits
non-zero stops the chain; rerunning the same command skips what completed and reruns the failed
step, whose stage resumes from what it left in its dir.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from safer_instruct.errors import SaferInstructError
from safer_instruct.paths import PROJECT_ROOT
from safer_instruct.pipeline import state
from safer_instruct.pipeline.plan import Plan, write_config

LOG_NAME = "stage.log"


class StepFailed(SaferInstructError):
    pass


@dataclass
class StepResult:
    name: str
    status: str  # ran | skipped | reused | failed
    wall_s: float | None
    step_dir: Path
    note: str = ""


def incomplete_reason(plan: Plan, name: str) -> str | None:
    """Why a step is not complete, or None when it is."""
    step, step_dir = plan.steps[name], plan.step_dir(name)
    if state.is_complete(step_dir, step.fingerprint, step.outputs):
        return None
    marker = state.read_marker(step_dir)
    if marker and marker.get("fingerprint") != step.fingerprint:
        return "config changed"
    if marker:
        return f"output missing: {state.missing_outputs(step_dir, step.outputs)[0]}"
    return "not done"


def needs_run(plan: Plan, force: set[str]) -> dict[str, str | None]:
    """Why each step must run, or None when it is complete (decided before anything runs).

    A step runs when it is forced, incomplete, or when a step it needs runs (its input changes).
    """
    reasons: dict[str, str | None] = {}
    for name, step in plan.steps.items():
        upstream = [dep for dep in step.deps if reasons.get(dep)]
        if name in force or "all" in force:
            reasons[name] = "forced"
        else:
            reasons[name] = incomplete_reason(plan, name) or (f"{upstream[0]} reruns" if upstream else None)
    return reasons


def run_local(plan: Plan, registry: state.StepRegistry, force: set[str], verbose: bool = False) -> list[StepResult]:
    """Run every step that is not complete, in order. Raises StepFailed at the first failure."""
    ran: set[str] = set()
    results: list[StepResult] = []
    total = len(plan.steps)
    for index, (name, step) in enumerate(plan.steps.items(), start=1):
        step_dir = plan.step_dir(name)
        prefix = f"[{index}/{total}] {name} ({step.stage_name})"
        # Decided again here: a step reused from a sweep sibling does not force its dependents.
        rerun_deps = [dep for dep in step.deps if dep in ran]
        forced = name in force or "all" in force
        must_run = forced or bool(rerun_deps)
        reason = "forced" if forced else f"{rerun_deps[0]} reran" if rerun_deps else incomplete_reason(plan, name)
        if reason is None:
            marker = state.read_marker(step_dir) or {}
            if not state.is_reused(step_dir):
                registry.register(step.fingerprint, step_dir)
            results.append(StepResult(name, "skipped", marker.get("wall_s"), step_dir, "complete"))
            print(f"{prefix}: complete, skipped", flush=True)
            continue
        with registry.lock(step.fingerprint):
            shared = None if must_run else registry.find(step.fingerprint, step.outputs)
            if shared is not None and shared.resolve() != step_dir.resolve():
                state.move_aside(step_dir, plan.exp_dir)
                state.link_reused(step_dir, shared)
                results.append(StepResult(name, "reused", None, step_dir, f"same step as {shared}"))
                print(f"{prefix}: reused from {shared}", flush=True)
                continue
            moved = state.prepare_step_dir(step_dir, step.fingerprint, plan.exp_dir)
            if moved:
                print(f"{prefix}: config changed; previous outputs moved to {moved}", flush=True)
            write_config(plan, name)
            print(f"{prefix}: running ({reason}), log {step_dir / LOG_NAME}", flush=True)
            wall_s = _run_step(plan, name, step_dir, verbose)
            missing = state.missing_outputs(step_dir, step.outputs)
            if missing:
                raise StepFailed(
                    f"step '{name}' ({step.stage_name}) exited 0 but did not write {', '.join(missing)} "
                    f"in {step_dir}; see {step_dir / LOG_NAME}"
                )
            state.write_marker(step_dir, step.fingerprint, stage=step.stage_name, wall_s=round(wall_s, 2),
                               command=shlex.join(["safer-instruct", *plan.command(name)]))  # fmt: skip
            registry.register(step.fingerprint, step_dir)
        ran.add(name)
        results.append(StepResult(name, "ran", wall_s, step_dir))
        print(f"{prefix}: done in {wall_s:.1f} s", flush=True)
    return results


def _run_step(plan: Plan, name: str, step_dir: Path, verbose: bool) -> float:
    step = plan.steps[name]
    command = [sys.executable, "-m", "safer_instruct.cli", *plan.command(name)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SAFER_INSTRUCT_EXPERIMENT": plan.name, "SAFER_INSTRUCT_STEP": name}
    log_path = step_dir / LOG_NAME
    tail: deque[str] = deque(maxlen=25)
    started = time.perf_counter()
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"$ {shlex.join(['safer-instruct', *plan.command(name)])}\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")  # fmt: skip
        try:
            with _forward_sigterm(proc):
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()  # `tail -f stage.log` shows progress as it happens
                    tail.append(line.rstrip("\n"))
                    if verbose:
                        print(f"  {name} | {line}", end="", flush=True)
                code = proc.wait()
        except (KeyboardInterrupt, SystemExit):
            _stop(proc)
            raise
    wall_s = time.perf_counter() - started
    if code != 0:
        print(f"--- last lines of {log_path} ---", *tail, "---", sep="\n", file=sys.stderr, flush=True)
        raise StepFailed(
            f"step '{name}' ({step.stage_name}) failed with exit code {code} after {wall_s:.1f} s "
            f"(log: {log_path}); fix it and rerun the same command to continue from this step"
        )
    return wall_s


@contextlib.contextmanager
def _forward_sigterm(proc: subprocess.Popen) -> Iterator[None]:
    """A SIGTERM to the runner (`kill`, a batch system) reaches the running step too, whose stage stops
    cleanly and resumes on the next run; the runner then exits with 143 as the default action would."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C reached the step's process too (same process group), or SIGTERM was forwarded: give it time to stop cleanly."""
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
