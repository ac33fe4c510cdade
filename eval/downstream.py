"""`safer-instruct eval downstream`: general ability of a model with lm-evaluation-harness.

    safer-instruct eval downstream model=smollm2-135m tasks=[arc_challenge,hellaswag]
    python eval/downstream.py model=tiny tasks=[si_local_mc] harness.include_path=conf/lm_eval_tasks \
        harness.include_defaults=false

Writes into out_dir: `downstream.json` (score per task with its metric and standard error, the
settings, task and library versions) and `lm_eval_results.json` (the harness's results without
per-sample logs), next to `config.yaml` and `versions.json`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safer_instruct.config import is_main_process, library_versions, stage_main, to_plain
from safer_instruct.evaluation.downstream import run_downstream
from safer_instruct.io import atomic_write_json
from safer_instruct.model_kit import pin_model_path
from safer_instruct.tracking import tracking_run


@stage_main("eval_downstream")
def main(cfg: DictConfig, out_dir: Path) -> None:
    model = to_plain(cfg.model)
    commit = pin_model_path(model)  # a hub model pinned to a revision: that commit's snapshot
    with tracking_run(cfg, "eval_downstream", out_dir) as tracking:
        summary = run_downstream(model, list(cfg.tasks), to_plain(cfg.harness), seed=int(cfg.seed))
        if not summary or not is_main_process():
            return
        raw = summary.pop("lm_eval")
        summary = {
            "label": cfg.label or model.get("name") or model["path"],
            "training_data": cfg.training_data,
            "model": {
                key: model.get(key) for key in ("name", "path", "revision", "prompt_format", "system_prompt", "dtype")
            } | {"commit": commit},
            **summary,
            "versions": library_versions(),
        }
        atomic_write_json(out_dir / "lm_eval_results.json", raw)
        atomic_write_json(out_dir / "downstream.json", summary)
        tracking.summary({f"downstream/{task}": s["value"] for task, s in summary["scores"].items()})
    for task, score in summary["scores"].items():
        stderr = f" ± {score['stderr']:.3f}" if score["stderr"] is not None else ""
        print(f"{task}: {score['metric']} = {score['value']:.3f}{stderr} (n={score['n']})")
    print(f"results: {out_dir / 'downstream.json'}")


if __name__ == "__main__":
    main()
