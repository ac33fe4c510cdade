"""`safer-instruct run`: chain the stages of an experiment, locally or as Slurm jobs.

* `plan` turns an experiment preset (`conf/experiment/*.yaml`) into steps: one `safer-instruct STAGE
  overrides...` command each, with its own output dir, its dependencies (read from the `@{step}`
  references in its arguments) and a fingerprint of what it would compute.
* `state` decides which steps are complete (a marker written after the stage exited 0, with the same
  fingerprint, and the declared outputs present), so a rerun continues where a failure stopped.
* `local` runs the steps one after another as subprocesses; `slurm` renders job scripts from the
  templates in `slurm/` and submits them with `afterok` dependencies; both print a dry run.
* `shards` splits induction over a Slurm array; `marker` is what job scripts call to mark a step done.
* `sweep` collects a Hydra multirun of experiments into one report; `main` is the `run` entry point.
"""
