"""`safer-instruct construct`: Safer-Instruct preference data from a corpus of undesired texts.

    safer-instruct construct inducer.model=outputs/reverse/model expert.model=kit:smollm2-135m \
        out_dir=outputs/construct/demo
    python -m safer_instruct.construct.main ...      # the same, without the CLI
    safer-instruct construct ... dry_run=true        # requests and cost per phase and role; sends nothing

A thin entry point (the CLI runs this file): the phases live in `safer_instruct.construct`.
Rerun the same command (same out_dir) after an interruption to continue where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safer_instruct.config import stage_main


@stage_main("construct")
def main(cfg: DictConfig, out_dir: Path) -> dict:
    if cfg.get("dry_run"):
        from safer_instruct.construct.dry_run import estimate_construct

        return estimate_construct(cfg, out_dir)  # the table and estimate.json; nothing sent
    from safer_instruct.construct.pipeline import run_construct
    from safer_instruct.tracking import tracking_run

    with tracking_run(cfg, "construct", out_dir) as run:
        stats = run_construct(cfg, out_dir)
        final = stats["phases"].get("assemble") or {}
        summary = {f"{name}/out": entry["out"] for name, entry in stats["phases"].items()}
        summary.update({f"split/{k}": v for k, v in (stats.get("splits") or {}).items()})
        run.summary(summary)
    print(f"construct: {final.get('out', 0)} preference rows in {out_dir} "
          f"(train {(stats.get('splits') or {}).get('train', 0)}, test {(stats.get('splits') or {}).get('test', 0)})")
    return stats


if __name__ == "__main__":
    main()
