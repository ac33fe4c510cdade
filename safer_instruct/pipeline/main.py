"""Entry point of `safer-instruct run experiment=NAME [launcher=local|slurm] [dry_run=true]`.

Runs as a script (`python safer_instruct/pipeline/main.py experiment=smoke`), which is how the CLI
starts it; `-m key=a,b` sweeps whole experiments (Hydra multirun, any Hydra launcher).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safer_instruct.config import stage_main


@stage_main("run")
def main(cfg: DictConfig, out_dir: Path) -> int:
    from safer_instruct.pipeline.runner import run_experiment

    return run_experiment(cfg, out_dir)


if __name__ == "__main__":
    main()
