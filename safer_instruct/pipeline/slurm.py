"""Slurm: one job per step, rendered from the templates in `slurm/`, chained with `afterok`.

The job script of a step is its template (`slurm/train.sbatch` for training, `slurm/stage.sbatch`
for everything else) with the template's own `#SBATCH` defaults replaced by the step's resources
from config, and the step's stage and saved config (`<step dir>/config.yaml`, written at submission)
set as the script's arguments. So a generated job and a template submitted by hand run the same lines.

Resources of a step, later entries winning: `launcher.resources`, the experiment's
`experiment.resources.<profile>` (a 7B experiment asks for GPUs and nodes, the smoke one for none),
the step's own `resources`. Cluster facts (partition, account, qos, setup lines) come from the launcher.
"""

from __future__ import annotations

import itertools
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safer_instruct.errors import ConfigError, SaferInstructError
from safer_instruct.paths import PROJECT_ROOT
from safer_instruct.pipeline import state
from safer_instruct.pipeline.plan import Plan, Step, config_text, write_config
from safer_instruct.stages import stage_named

TEMPLATES = {
    "train": PROJECT_ROOT / "slurm" / "train.sbatch",
    "stage": PROJECT_ROOT / "slurm" / "stage.sbatch",
    "induce": PROJECT_ROOT / "slurm" / "induce_array.sbatch",
}
JOBS_FILE = "jobs.json"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
RESOURCE_KEYS = {"nodes", "gpus_per_node", "cpus_per_task", "mem", "time", "accelerate_config", "constraint",
                 "shards", "shard_parallel"}  # fmt: skip
INDUCE_SUFFIX = ".induce"  # the array job of a sharded construct step


class SlurmError(SaferInstructError):
    pass


def step_resources(step: Step, launcher: DictConfig, experiment: DictConfig) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    profiles = OmegaConf.to_container(experiment.get("resources") or {}, resolve=True) or {}
    for layer in (launcher.get("resources") or {}, profiles.get(step.profile) or {}, step.resources):
        layer = OmegaConf.to_container(layer, resolve=True) if isinstance(layer, DictConfig) else layer
        unknown = set(layer) - RESOURCE_KEYS
        if unknown:
            raise ConfigError(
                f"step '{step.name}': unknown Slurm resource key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(RESOURCE_KEYS))})"
            )
        merged.update({k: v for k, v in layer.items() if v is not None})
    return merged


def _template_body(template: Path) -> str:
    """The template without its leading comment block and #SBATCH defaults."""
    lines = template.read_text().splitlines()
    return "\n".join(itertools.dropwhile(lambda line: line.startswith("#") or not line.strip(), lines)) + "\n"


def shard_count(step: Step, resources: Mapping[str, Any]) -> int:
    shards = int(resources.get("shards") or 1)
    if shards > 1 and step.stage[0] != "construct":
        raise ConfigError(f"step '{step.name}': `shards` applies to construct steps only (induction)")
    return shards


def sbatch_directives(plan: Plan, step: Step, launcher: DictConfig, resources: Mapping[str, Any],
                      array: bool = False) -> list[str]:  # fmt: skip
    step_dir = plan.step_dir(step.name)
    if array:
        shards = shard_count(step, resources)
        parallel = int(resources.get("shard_parallel") or shards)
        options = [
            f"--job-name={launcher.job_name_prefix}{plan.name}.{step.name}{INDUCE_SUFFIX}",
            f"--array=0-{shards - 1}%{parallel}",
            f"--output={step_dir}/shards/slurm-%A_%a.out",
        ]
    else:
        options = [f"--job-name={launcher.job_name_prefix}{plan.name}.{step.name}", f"--output={step_dir}/slurm-%j.out"]
    options += ["--open-mode=append", f"--nodes={1 if array else resources.get('nodes', 1)}"]
    if step.stage[0] == "train":
        options.append("--ntasks-per-node=1")  # one accelerate launcher per node
    else:
        options.append("--ntasks=1")
    options += [f"--{key.replace('_', '-')}={resources[key]}" for key in ("cpus_per_task", "gpus_per_node", "mem")
                if resources.get(key)]  # fmt: skip
    options.append(f"--time={resources.get('time') or launcher.time}")
    for key in ("partition", "account", "qos"):
        if launcher.get(key):
            options.append(f"--{key}={launcher[key]}")
    if resources.get("constraint"):
        options.append(f"--constraint={resources['constraint']}")
    if launcher.requeue:
        options += ["--requeue", f"--signal=B:USR1@{launcher.signal_before_s}"]
    options += [str(extra) for extra in launcher.get("sbatch_args") or []]
    return [f"#SBATCH {option}" for option in options]


def render_job_script(plan: Plan, step: Step, launcher: DictConfig, experiment: DictConfig,
                      array: bool = False) -> str:  # fmt: skip
    """The job script of a step (or, with array=True, of its sharded induction)."""
    resources = step_resources(step, launcher, experiment)
    template = TEMPLATES["induce" if array else "train" if step.stage[0] == "train" else "stage"]
    env = {
        "SAFER_INSTRUCT_ROOT": str(PROJECT_ROOT),
        "SAFER_INSTRUCT_VENV": str(launcher.get("venv") or sys.prefix),
        "SAFER_INSTRUCT_SETUP": "\n".join(str(line) for line in launcher.get("setup") or []),
        "SAFER_INSTRUCT_MAX_REQUEUES": str(launcher.max_requeues),
        "SAFER_INSTRUCT_EXPERIMENT": plan.name,
        "SAFER_INSTRUCT_STEP": step.name,
        "SAFER_INSTRUCT_STEP_DIR": str(plan.step_dir(step.name)),
    }
    if array:  # the shards' job marks nothing done: the construct job after it does
        env["SAFER_INSTRUCT_SHARDS"] = str(shard_count(step, resources))
    else:
        env.update(SAFER_INSTRUCT_FINGERPRINT=step.fingerprint, SAFER_INSTRUCT_OUTPUTS=json.dumps(list(step.outputs)))
    if step.stage[0] == "train":
        env["SAFER_INSTRUCT_SCRIPT"] = stage_named(step.stage).script
        env["SAFER_INSTRUCT_GPUS_PER_NODE"] = str(resources.get("gpus_per_node") or 0)
        if resources.get("accelerate_config"):
            env["ACCELERATE_CONFIG"] = str(resources["accelerate_config"])
    lines = [
        "#!/bin/bash",
        *sbatch_directives(plan, step, launcher, resources, array=array),
        "",
        f"# Step '{step.name}'{' (sharded induction)' if array else ''} of experiment '{plan.name}', "
        "written by `safer-instruct run launcher=slurm`.",
        *config_origin(plan, step.name),
        f"# The lines after `set --` are {template.relative_to(PROJECT_ROOT)} (submittable by hand).",
        *(f"export {key}={shlex.quote(value)}" for key, value in env.items()),
        "set -- " + " \\\n  ".join([shlex.join(step.stage), *(shlex.quote(a) for a in plan.command(step.name)[len(step.stage):])]),
        "",
        _template_body(template),
    ]
    return "\n".join(lines)


def config_origin(plan: Plan, name: str) -> list[str]:
    """Shell lines saying what the step's config was composed from: its stage's config and the step's
    settings as Hydra overrides, one per line (`:` does nothing; the lines are there to be read)."""
    step = plan.steps[name]
    settings = [f"conf/{step.config_name}.yaml", *(shlex.quote(o) for o in plan.overrides(name))]
    return [f"# {plan.config_path(name)} is conf/{step.config_name}.yaml with the step's settings:",
            ": " + " \\\n  ".join(settings)]  # fmt: skip


def sbatch_args(script: Path, dep_ids: list[str]) -> list[str]:
    args = ["--parsable"]
    if dep_ids:
        # Also asked per job, for clusters without DependencyParameters=kill_invalid_depend.
        args += [f"--dependency=afterok:{':'.join(dep_ids)}", "--kill-on-invalid-dep=yes"]
    return [*args, str(script)]


def script_path(plan: Plan, name: str, array: bool = False) -> Path:
    return plan.exp_dir / "slurm" / f"{name}{INDUCE_SUFFIX if array else ''}.sbatch"


@dataclass
class Submission:
    jobs: dict[str, str]  # step -> Slurm job id, for the steps submitted
    skipped: list[str]  # complete steps, not submitted
    arrays: dict[str, str] = field(default_factory=dict)  # sharded construct step -> its induce array job


def _running_jobs(plan: Plan) -> list[str]:
    previous = plan.exp_dir / "slurm" / JOBS_FILE
    if not previous.exists():
        return []
    known = json.loads(previous.read_text())
    ids = [*known.get("jobs", {}).values(), *known.get("arrays", {}).values()]
    if not ids:
        return []
    # The whole queue, not `-j IDS`: squeue fails on ids it has already forgotten.
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    queued = {line.strip().split("_")[0] for line in out.stdout.splitlines() if line.strip()}
    return [job_id for job_id in ids if job_id in queued]


def submit(plan: Plan, reasons: Mapping[str, str | None], launcher: DictConfig, experiment: DictConfig,
           registry: state.StepRegistry | None = None) -> Submission:  # fmt: skip
    """Write every job script and submit the steps that need to run, in dependency order.

    A step is not submitted when it is complete, or when `registry` finds the same step complete
    elsewhere (`reuse=[...]`) and nothing it needs is submitted now: then it is linked in.
    """
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "launcher=slurm: `sbatch` is not on PATH. Run this on a Slurm login node, use launcher=local, "
            "or add dry_run=true to print the job scripts and the dependency graph without Slurm"
        )
    queued = _running_jobs(plan)
    if queued:
        raise SlurmError(
            f"experiment dir {plan.exp_dir} still has jobs in the queue ({', '.join(queued)}): "
            "wait for them or `scancel` them before submitting again"
        )
    jobs: dict[str, str] = {}
    arrays: dict[str, str] = {}
    skipped: list[str] = []
    (plan.exp_dir / "slurm").mkdir(parents=True, exist_ok=True)  # the job scripts, and the job ids at the end

    def sbatch(label: str, script: Path, deps: list[str]) -> str:
        out = subprocess.run(["sbatch", *sbatch_args(script, deps)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SlurmError(f"sbatch refused {label}: {out.stderr.strip() or out.stdout.strip()}")
        job_id = out.stdout.strip().split(";")[0]
        print(f"submitted {label:<24} job {job_id}" + (f"  afterok:{':'.join(deps)}" if deps else ""), flush=True)
        return job_id

    try:
        for name, step in plan.steps.items():
            fresh_input = reasons[name] == "forced" or any(dep in jobs for dep in step.deps)
            if not fresh_input and state.is_complete(plan.step_dir(name), step.fingerprint, step.outputs):
                skipped.append(name)
                continue
            shared = None if fresh_input or registry is None else registry.find(step.fingerprint, step.outputs)
            if shared is not None and shared.resolve() != plan.step_dir(name).resolve():
                state.move_aside(plan.step_dir(name), plan.exp_dir)
                state.link_reused(plan.step_dir(name), shared)
                print(f"reused    {name:<24} from {shared}", flush=True)
                skipped.append(name)
                continue
            state.prepare_step_dir(plan.step_dir(name), step.fingerprint, plan.exp_dir)
            write_config(plan, name)
            deps = [jobs[dep] for dep in step.deps if dep in jobs]
            if shard_count(step, step_resources(step, launcher, experiment)) > 1:
                array_script = script_path(plan, name, array=True)
                array_script.write_text(render_job_script(plan, step, launcher, experiment, array=True))
                (plan.step_dir(name) / "shards").mkdir(parents=True, exist_ok=True)  # Slurm writes logs there
                arrays[name] = sbatch(f"{name}{INDUCE_SUFFIX} (array)", array_script, deps)
                deps = [*deps, arrays[name]]
            script = script_path(plan, name)
            script.write_text(render_job_script(plan, step, launcher, experiment))
            jobs[name] = sbatch(name, script, deps)
    except BaseException:
        if jobs or arrays:  # never leave half a chain in the queue
            subprocess.run(["scancel", *arrays.values(), *jobs.values()], capture_output=True)
        raise
    (plan.exp_dir / "slurm" / JOBS_FILE).write_text(
        json.dumps({"experiment": plan.name, "jobs": jobs, "arrays": arrays, "skipped": skipped}, indent=2) + "\n"
    )
    return Submission(jobs=jobs, skipped=skipped, arrays=arrays)


def job_states(ids: list[str]) -> dict[str, str]:
    """Current state of each job: sacct when accounting runs, else scontrol (finished jobs age out)."""
    found: dict[str, str] = {}
    tasks: dict[str, list[str]] = {}
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
                         capture_output=True, text=True)  # fmt: skip
    if out.returncode == 0:
        for line in out.stdout.splitlines():
            job_id, _, job_state = line.partition("|")
            if not job_state:
                continue
            base, _, task = job_id.partition("_")
            if task and base in ids:  # an array task: 12_0, 12_1, or 12_[2-7] while pending
                tasks.setdefault(base, []).append(job_state.split()[0])
            elif job_id in ids:
                found[job_id] = job_state.split()[0]
    for base, states in tasks.items():  # an array job: running until every task ended, then its first failure
        ended = all(s in TERMINAL for s in states)
        found[base] = next((s for s in states if s != "COMPLETED"), "COMPLETED") if ended else "RUNNING"
    for job_id in ids:
        if job_id in found:
            continue
        show = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
        for item in show.stdout.split():
            if item.startswith("JobState="):
                found[job_id] = item.split("=", 1)[1]
    return found


def wait(submission: Submission, poll_s: float, timeout_s: float | None = None) -> dict[str, str]:
    """Poll until every submitted job has finished; step (or `step.induce`) -> final state."""
    named = {**{f"{step}{INDUCE_SUFFIX}": i for step, i in submission.arrays.items()}, **submission.jobs}
    ids = list(named.values())
    started = time.monotonic()
    last: dict[str, str] = {}
    while True:
        found = job_states(ids)
        last = {step: found.get(job_id, "UNKNOWN") for step, job_id in named.items()}
        if all(s in TERMINAL for s in last.values()):
            return last
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise SlurmError(f"jobs still not finished after {timeout_s:.0f} s: {last}")
        time.sleep(poll_s)


# --- dry run --------------------------------------------------------------------------------------


def graph_comment(plan: Plan, reasons: Mapping[str, str | None], sharded: Mapping[str, int]) -> list[str]:
    width = max(len(name) for name in plan.steps)
    lines = ["# Dependency graph (step <- steps it needs), and what this run would do:"]
    for name, step in plan.steps.items():
        needs = f"<- {', '.join(step.deps)}" if step.deps else ""
        what = f"run ({reasons[name]})" if reasons[name] else "skip (complete)"
        if reasons[name] and sharded.get(name, 1) > 1:
            what += f", after an induction array of {sharded[name]} shards"
        lines.append(f"#   {name.ljust(width)}  {needs:<40} {what}")
    return lines


def _heredoc(path: Path, text: str, tag: str) -> list[str]:
    """Shell lines that write `text` to `path` (a step's config, a job script)."""
    return [f"cat > {shlex.quote(str(path))} <<'{tag}'", text.rstrip("\n"), tag]


def dry_run_script(plan: Plan, reasons: Mapping[str, str | None], launcher: DictConfig,
                   experiment: DictConfig, invocation: str) -> str:  # fmt: skip
    """A bash script doing what the run would do: each step's config, then the job scripts and sbatch
    calls, or the commands."""
    on_slurm = launcher.name == "slurm"
    sharded = {n: shard_count(s, step_resources(s, launcher, experiment)) for n, s in plan.steps.items() if on_slurm}
    lines = [
        "#!/usr/bin/env bash",
        f"# {invocation}",
        f"# Dry run (launcher={launcher.name}): nothing was run or submitted. Experiment dir: {plan.exp_dir}",
        *graph_comment(plan, reasons, sharded),
        "set -euo pipefail",
        f"mkdir -p {shlex.quote(str(plan.exp_dir / 'slurm'))}" if on_slurm else f"cd {shlex.quote(str(PROJECT_ROOT))}",
    ]
    todo = [name for name in plan.steps if reasons[name]]
    for name in todo:
        step = plan.steps[name]
        lines += ["", f"# --- step {name}: {step.stage_name} ---", f"mkdir -p {shlex.quote(str(plan.step_dir(name)))}",
                  *_heredoc(plan.config_path(name), config_text(plan, name), "SAFER_INSTRUCT_CONFIG")]  # fmt: skip
        if not on_slurm:
            lines += [
                *config_origin(plan, name),
                shlex.join(["safer-instruct", *step.stage]) + " \\\n  "
                + " \\\n  ".join(shlex.quote(a) for a in plan.command(name)[len(step.stage):]),
                shlex.join(["python", "-m", "safer_instruct.pipeline.marker", str(plan.step_dir(name)),
                            "--fingerprint", step.fingerprint, "--outputs", *step.outputs]),  # fmt: skip
            ]
            continue
        deps = [f"${{jid_{dep}}}" for dep in step.deps if dep in todo]
        jobs = [(False, name)]
        if sharded[name] > 1:
            jobs.insert(0, (True, f"{name}_induce"))
            lines.append(f"mkdir -p {shlex.quote(str(plan.step_dir(name) / 'shards'))}")
        for array, var in jobs:
            script = script_path(plan, name, array=array)
            job = render_job_script(plan, step, launcher, experiment, array=array)
            lines += _heredoc(script, job, "SAFER_INSTRUCT_JOB")
            args = " ".join(a if a.startswith("--dependency") else shlex.quote(a) for a in sbatch_args(script, deps))
            lines.append(f'jid_{var}=$(sbatch {args} | cut -d";" -f1)')
            lines.append(f'echo "submitted {var}: job $jid_{var}"')
            deps = [*deps, f"${{jid_{var}}}"]
    return "\n".join(lines) + "\n"
