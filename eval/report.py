"""`safer-instruct report runs=[DIR,...]`: the comparison of finished runs.

    safer-instruct report runs=[outputs/eval_harmlessness/base,outputs/eval_harmlessness/dpo]

Writes into out_dir: `report.md` (the table with both judges' rates and each row's training, unmatched
rows, the paper reference beside the rates judged like it or why it is not shown, the charts),
`report.csv` (the same rows, one column per number), `report.json`, and the PNG charts
`harmlessness.png` (95% CI error bars), `paper_comparison.png` (rates judged by the paper's judge, its
figures as lines), `downstream.png` and `dpo_curves.png` when there is data.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safer_instruct.config import stage_main, to_plain
from safer_instruct.evaluation.report import build_report


@stage_main("report")
def main(cfg: DictConfig, out_dir: Path) -> None:
    runs = cfg.runs if not isinstance(cfg.runs, str) else [cfg.runs]
    summary = build_report(
        [str(run) for run in runs],
        out_dir,
        title=str(cfg.title),
        notes=[str(note) for note in cfg.notes],
        reference=to_plain(cfg.paper_reference),
        charts=bool(cfg.charts),
    )
    print((out_dir / "report.md").read_text(encoding="utf-8"))
    print(f"report: {out_dir / 'report.md'} ({len(summary['rows'])} rows; charts: {', '.join(summary['charts'])})")


if __name__ == "__main__":
    main()
