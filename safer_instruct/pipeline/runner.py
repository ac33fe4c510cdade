"""`safer-instruct run`: plan the experiment (every step's config composed and checked), then run or submit it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig

from safer_instruct.errors import ConfigError
from safer_instruct.io import atomic_write_json, atomic_write_text
from safer_instruct.pipeline import local, slurm, summary
from safer_instruct.pipeline.plan import Plan, build_plan, validate
from safer_instruct.pipeline.state import StepRegistry

PLAN_FILE = "experiment.json"
SWEEP_POINT_FILE = "sweep_point.json"


def _sweep_context(exp_dir: Path) -> tuple[Path, list[str] | None]:
    """(registry root, this point's overrides) in a multirun sweep; (exp_dir, None) otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra_cfg = HydraConfig.get()
        return Path(hydra_cfg.sweep.dir).resolve(), list(hydra_cfg.overrides.task)
    return exp_dir, None


def _invocation(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return shlex.join(["safer-instruct", "run", *overrides]) if overrides else f"safer-instruct run experiment={cfg.experiment.name}"


def write_plan(plan: Plan, reasons: dict[str, str | None]) -> None:
    atomic_write_json(
        plan.exp_dir / PLAN_FILE,
        {
            "experiment": plan.name,
            "exp_dir": str(plan.exp_dir),
            "report_step": plan.report_step,
            "steps": {
                name: {
                    "stage": step.stage_name,
                    "needs": list(step.deps),
                    "fingerprint": step.fingerprint,
                    "outputs": list(step.outputs),
                    "dir": str(plan.step_dir(name)),
                    "command": shlex.join(["safer-instruct", *plan.command(name)]),
                    "config": str(plan.config_path(name)),
                    "overrides": plan.overrides(name),
                    "would_run": reasons[name],
                }
                for name, step in plan.steps.items()
            },
        },
    )


def run_experiment(cfg: DictConfig, out_dir: Path) -> int:
    plan = build_plan(cfg, out_dir)
    force = {str(f) for f in cfg.get("force") or []}
    unknown = force - set(plan.steps) - {"all"}
    if unknown:
        raise ConfigError(f"force: unknown step(s) {', '.join(sorted(unknown))} (steps: {', '.join(plan.steps)})")
    validate(plan)  # every step's config is complete and holds no secret: fail before any work
    reasons = local.needs_run(plan, force)
    registry_root, sweep_overrides = _sweep_context(plan.exp_dir)
    reuse = tuple(Path(str(d)).resolve() for d in cfg.get("reuse") or [])
    for folder in reuse:
        if not (folder / PLAN_FILE).exists() and not any(folder.glob(f"sweep/*/{PLAN_FILE}")):
            raise ConfigError(f"reuse: {folder} is not an experiment dir (no {PLAN_FILE} in it)")
    registry = StepRegistry(registry_root, also=reuse)
    launcher = cfg.launcher

    if cfg.dry_run:
        script = slurm.dry_run_script(plan, reasons, launcher, cfg.experiment, _invocation(cfg))
        sys.stdout.write(script)
        sys.stdout.flush()
        return 0

    plan.exp_dir.mkdir(parents=True, exist_ok=True)
    write_plan(plan, reasons)
    if sweep_overrides is not None:
        atomic_write_json(plan.exp_dir / SWEEP_POINT_FILE, {"overrides": sweep_overrides, "exp_dir": str(plan.exp_dir)})
    print(f"experiment '{plan.name}' in {plan.exp_dir} ({len(plan.steps)} steps, launcher={launcher.name})", flush=True)

    failed: dict[str, str] = {}  # Slurm jobs that ended in another state than COMPLETED
    if launcher.name == "local":
        results = local.run_local(plan, registry, force, verbose=bool(cfg.verbose))
    elif launcher.name == "slurm":
        submission = slurm.submit(plan, reasons, launcher, cfg.experiment, registry)
        if not submission.jobs:
            print("every step is complete: nothing submitted", flush=True)
        if not launcher.wait or not submission.jobs:
            if plan.report_step:
                print(f"report (when the jobs are done): {summary.report_path(plan)}", flush=True)
            print(f"job ids: {plan.exp_dir / 'slurm' / slurm.JOBS_FILE}", flush=True)
            return 0
        states = slurm.wait(submission, poll_s=float(launcher.poll_s))
        results = summary.results_from_states(plan, submission, states)
        failed = {step: s for step, s in states.items() if s != "COMPLETED"}
    else:
        raise ConfigError(f"launcher.name must be local or slurm, got '{launcher.name}'")
    text = summary.render(plan, results)
    atomic_write_text(plan.exp_dir / "summary.md", text)
    print(text, flush=True)
    if failed:
        raise slurm.SlurmError(
            "jobs did not complete: " + ", ".join(f"{step} {s}" for step, s in failed.items())
            + f" (logs: <step dir>/slurm-<job>.out under {plan.exp_dir}); rerun the same command to continue"
        )
    return 0

