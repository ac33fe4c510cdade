"""`safer-instruct run`: run the steps of an experiment, locally or as Slurm jobs.

Words: a *stage* is a command of the CLI (`train dpo`, `eval harmlessness`: `safer_instruct.stages`); a
*step* is a node of an experiment's graph, which runs one stage with its own config and out_dir; a
*phase* is a unit inside a stage (construct's induce ... assemble; eval's generate_answers, judge).

* `plan` turns an experiment preset (`conf/experiment/*.yaml`) into steps: each with its stage, its
  resolved config (saved as `<step dir>/config.yaml`, what the step's process reads), its dependencies
  (read from the `@{step}` references in its args) and a fingerprint of that config.
* `state` decides which steps are complete (a marker written after the step's process exited 0, with
  the same fingerprint, and the declared outputs present), so a rerun continues where a failure stopped.
* `local` runs the steps one after another as subprocesses; `slurm` renders job scripts from the
  templates in `slurm/` and submits them with `afterok` dependencies; both print a dry run.
* `shards` splits induction over a Slurm array; `marker` is what job scripts call to mark a step done.
* `sweep` collects a Hydra multirun of experiments into one report; `main` is the `run` entry point.
"""
