"""The end of a run: where the report is, a short table of its results, and what each step did."""

from __future__ import annotations

import csv
from pathlib import Path

from safer_instruct.pipeline import state
from safer_instruct.pipeline.local import StepResult
from safer_instruct.pipeline.plan import Plan

REPORT_TABLE = "report.csv"
REPORT_TEXT = "report.md"
MAX_ROWS = 20


def report_path(plan: Plan) -> Path | None:
    if not plan.report_step:
        return None
    return plan.step_dir(plan.report_step) / REPORT_TEXT


def results_from_states(plan: Plan, submission, states: dict[str, str]) -> list[StepResult]:
    results = []
    for name in plan.steps:
        step_dir = plan.step_dir(name)
        marker = state.read_marker(step_dir) or {}
        if name in submission.jobs:
            status = "ran" if states.get(name) == "COMPLETED" else states.get(name, "UNKNOWN").lower()
            results.append(StepResult(name, status, marker.get("wall_s"), step_dir, f"job {submission.jobs[name]}"))
        else:
            results.append(StepResult(name, "skipped", marker.get("wall_s"), step_dir, "complete"))
    return results


def report_table(report_dir: Path) -> list[list[str]]:
    """A short table from a report's CSV (header first): model, harmlessness with CI, scores; [] without one."""
    path = report_dir / REPORT_TABLE
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return short_table(list(csv.DictReader(handle)))


def _pct(value: str) -> str:
    try:
        return f"{100 * float(value):.1f}"
    except ValueError:
        return ""


def short_table(records: list[dict[str, str]]) -> list[list[str]]:
    if not records:
        return []
    known = {"run", "model", "training_data", "prompts", "judge", "judge_kappa"}
    known |= {k for k in records[0] if k.startswith(("harmless_", "pairwise_win", "second_judge", "train_"))}
    scores = [k for k in records[0] if k not in known and not k.endswith("_stderr") and "_harmless" not in k]
    header = ["run", "model", "training data", "harmless % [95% CI]", "n", "unjudged", *scores]
    rows = [header]
    for record in records:
        rate = _pct(record.get("harmless_rate", ""))
        if rate:
            rate += f" [{_pct(record.get('harmless_ci_low', ''))}, {_pct(record.get('harmless_ci_high', ''))}]"
        rows.append([record.get("run", ""), record.get("model", ""), record.get("training_data", ""), rate,
                     record.get("harmless_n", ""), record.get("harmless_n_unjudged", ""),
                     *(_short(record.get(k, "")) for k in scores)])  # fmt: skip
    # Leave out empty columns, and the run column when the model names alone tell the rows apart.
    models = [row[1] for row in rows[1:]]
    keep = [i for i in range(len(header)) if any(row[i] for row in rows[1:]) or i == 1]
    if len(set(models)) == len(models):
        keep = [i for i in keep if i != 0]
    return [[row[i] for i in keep] for row in rows][: MAX_ROWS + 1]


def _short(value: str) -> str:
    try:
        return f"{float(value):.3f}"
    except ValueError:
        return value


def markdown_table(rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return lines


def render(plan: Plan, results: list[StepResult]) -> str:
    lines = [f"## Experiment {plan.name}", "", f"Experiment dir: {plan.exp_dir}"]
    path = report_path(plan)
    if path is not None:
        lines.append(f"Report: {path}")
        table = report_table(path.parent)
        if table:
            lines += ["", *markdown_table(table)]
    lines += ["", "| step | stage | status | wall s |", "|---|---|---|---|"]
    for result in results:
        wall = f"{result.wall_s:.1f}" if isinstance(result.wall_s, (int, float)) else ""
        lines.append(f"| {result.name} | {plan.steps[result.name].stage_name} | {result.status} | {wall} |")
    return "\n".join(lines) + "\n"
