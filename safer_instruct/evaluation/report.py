"""The comparison report: finished runs in, one table (Markdown + CSV), bar charts and curves out.

`collect(runs)` finds every `harmlessness.json`, `downstream.json` and training `metrics.jsonl` under
the given run folders (a stage's own folder, or an experiment folder holding several). One row per
evaluated model (label) per run folder: harmlessness overall and per prompt source with 95% CIs,
unjudged counts, the judge, pairwise win rate and judge agreement when present, downstream scores.

The paper's published rates (94.7% Alpaca + Safer-Instruct, 86.3% human-annotated baseline) appear as
a labelled reference only next to rows whose judge and prompts match the paper's (the judges it
names, the 900-prompt release test set with 300 prompts per source); otherwise the report says why
they are not shown.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError, DataError
from safer_instruct.io import atomic_write_json, atomic_write_text, iter_rows

log = logging.getLogger(__name__)

SOURCE_ORDER = ("hh", "beaver", "si")
CURVE_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


@dataclass
class Row:
    """One line of the table: a model (label) evaluated in one run folder."""

    run: str
    label: str
    training_data: str | None = None
    harmlessness: dict[str, Any] | None = None
    downstream: dict[str, Any] | None = None
    paths: list[str] = field(default_factory=list)

    @property
    def judge(self) -> str:
        if not self.harmlessness:
            return ""
        judge = self.harmlessness.get("judge") or {}
        template = (judge.get("template") or {}).get("id", "")
        return f"{judge.get('model', '?')} ({template})" if template else str(judge.get("model", "?"))


@dataclass
class Curve:
    """Training metrics of one run (one `metrics.jsonl`), per logged step."""

    name: str
    steps: dict[str, list[tuple[float, float]]]

    @property
    def is_dpo(self) -> bool:
        return bool(self.steps.get("rewards/margins") or self.steps.get("rewards/accuracies"))


def _load_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"not a readable JSON file ({err})", path=str(path)) from None
    if not isinstance(value, dict):
        raise DataError("expected a JSON object", path=str(path))
    return value


def _run_name(base: Path, folder: Path) -> str:
    relative = folder.relative_to(base) if folder != base else Path()
    return str(Path(base.name) / relative) if str(relative) != "." else base.name


def collect(runs: Sequence[str | Path]) -> tuple[list[Row], list[Curve]]:
    """Rows and training curves of the given run folders (searched recursively)."""
    rows: list[Row] = []
    curves: list[Curve] = []
    for run in runs:
        base = Path(str(run)).expanduser()
        if not base.is_dir():
            raise ConfigError(f"runs: {base} is not a folder (give finished run folders: runs=[DIR,...])")
        found = 0
        by_key: dict[tuple[str, str], Row] = {}
        for path in sorted(base.rglob("harmlessness.json")):
            data = _load_json(path)
            label = str(data.get("label") or path.parent.name)
            row = Row(_run_name(base, path.parent), label, data.get("training_data"), harmlessness=data,
                      paths=[str(path)])  # fmt: skip
            rows.append(row)
            by_key.setdefault((base.name, label), row)
            found += 1
        for path in sorted(base.rglob("downstream.json")):
            data = _load_json(path)
            label = str(data.get("label") or path.parent.name)
            row = by_key.get((base.name, label))
            if row is None or row.downstream is not None:
                row = Row(_run_name(base, path.parent), label, data.get("training_data"), paths=[])
                rows.append(row)
                by_key.setdefault((base.name, label), row)
            row.downstream = data
            row.training_data = row.training_data or data.get("training_data")
            row.paths.append(str(path))
            found += 1
        for path in sorted(base.rglob("metrics.jsonl")):
            curves.append(read_curve(path, _run_name(base, path.parent)))
            found += 1
        if not found:
            raise ConfigError(f"runs: nothing to report under {base} (no harmlessness.json, downstream.json "
                              "or metrics.jsonl)")  # fmt: skip
    return rows, curves


def read_curve(path: Path, name: str) -> Curve:
    """Per-step training metrics; rows without a step or with non-numeric values are skipped."""
    steps: dict[str, list[tuple[float, float]]] = {}
    skipped = 0
    for row in iter_rows(path):
        data = row.data or {}
        step = data.get("step", data.get("global_step"))
        if row.error or not isinstance(step, (int, float)):
            skipped += 1
            continue
        for key in CURVE_KEYS:
            value = data.get(key, data.get(f"train/{key}"))
            if isinstance(value, (int, float)) and math.isfinite(value):
                steps.setdefault(key, []).append((float(step), float(value)))
    if skipped:
        log.info("%s: %d rows without a step skipped", path, skipped)
    return Curve(name, steps)


def sources_of(rows: Iterable[Row]) -> list[str]:
    found = {s for r in rows if r.harmlessness for s in (r.harmlessness.get("by_source") or {})}
    return [s for s in SOURCE_ORDER if s in found] + sorted(found - set(SOURCE_ORDER))


def tasks_of(rows: Iterable[Row]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for row in rows:
        for task, score in ((row.downstream or {}).get("scores") or {}).items():
            seen.setdefault(task, str(score.get("metric") or ""))
    return list(seen.items())


def paper_match(row: Row, reference: Mapping[str, Any]) -> str | None:
    """None when the row's judge and prompts match the paper's; else the reason they do not."""
    h = row.harmlessness
    if not h:
        return "no harmlessness result"
    reasons = []
    judge = str((h.get("judge") or {}).get("model") or "")
    models = [str(m) for m in reference.get("judge_models") or []]
    if not any(judge == m or judge.startswith(m) for m in models):
        reasons.append(f"judge '{judge}' is not one of the paper's ({', '.join(models)})")
    want = {str(k): int(v) for k, v in (reference.get("sources") or {}).items()}
    have = {str(k): int(v.get("n", 0)) for k, v in (h.get("by_source") or {}).items()}
    if have != want or int(h.get("n", 0)) != int(reference.get("n", 0)):
        reasons.append(f"prompts are not the paper's test set ({h.get('n')} prompts, sources {have}; "
                       f"the paper's: {reference.get('n')} prompts, {want})")  # fmt: skip
    return "; ".join(reasons) or None


def _pct(value: Any) -> str:
    return "" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _rate_cell(summary: Mapping[str, Any] | None, key: str = "rate") -> str:
    if not summary or summary.get(key) is None:
        return "n/a" if summary else ""
    ci = summary.get("ci95") or [None, None]
    text = f"{_pct(summary[key])} [{_pct(ci[0])}, {_pct(ci[1])}]"
    return text + (f" ({summary['n_unjudged']} unj.)" if summary.get("n_unjudged") else "")


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """(Markdown header, Markdown cells, CSV records) of the comparison table."""
    sources, tasks = sources_of(rows), tasks_of(rows)
    header = ["run", "model", "training data", "prompts", "judge", "harmless % [95% CI]", "n", "unjudged"]
    header += [f"{s} harmless %" for s in sources]
    header += ["pairwise win %", "judge kappa"] + [f"{t} ({m})" for t, m in tasks]
    cells, records = [], []
    for row in rows:
        h = row.harmlessness or {}
        by_source = h.get("by_source") or {}
        pairwise = h.get("pairwise") or {}
        kappa = ((h.get("second_judge") or {}).get("agreement") or {}).get("cohen_kappa")
        scores = (row.downstream or {}).get("scores") or {}
        prompts = (h.get("items") or {}).get("name", "")
        if h.get("items", {}).get("mode") == "pre-generated":
            prompts = f"{prompts} ({h['items'].get('column')} answers)"
        cell = [row.run, row.label, row.training_data or "", prompts, row.judge,
                _rate_cell(h) if h else "", str(h.get("n", "")), str(h.get("n_unjudged", ""))]  # fmt: skip
        cell += [_rate_cell(by_source.get(s)) for s in sources]
        cell += [
            _rate_cell(pairwise, "win_rate") if pairwise else "",
            "" if kappa is None else f"{kappa:.2f}",
        ]
        for task, _ in tasks:
            score = scores.get(task)
            if not score or score.get("value") is None:
                cell.append("")
            else:
                err = f" ± {score['stderr']:.3f}" if score.get("stderr") is not None else ""
                cell.append(f"{score['value']:.3f}{err}")
        cells.append(cell)
        record: dict[str, Any] = {"run": row.run, "model": row.label, "training_data": row.training_data,
                                  "prompts": prompts, "judge": row.judge}  # fmt: skip
        record.update(_rate_fields("harmless", h))
        for s in sources:
            record.update(_rate_fields(f"harmless_{s}", by_source.get(s)))
        record.update({f"pairwise_{k}": v for k, v in _rate_fields("win", pairwise, "win_rate").items()})
        record["judge_kappa"] = kappa
        for task, metric in tasks:
            score = scores.get(task) or {}
            record[f"{task}_{metric}"] = score.get("value")
            record[f"{task}_{metric}_stderr"] = score.get("stderr")
        records.append(record)
    return header, cells, records


def _rate_fields(prefix: str, summary: Mapping[str, Any] | None, key: str = "rate") -> dict[str, Any]:
    summary = summary or {}
    ci = summary.get("ci95") or [None, None]
    return {f"{prefix}_rate": summary.get(key), f"{prefix}_ci_low": ci[0], f"{prefix}_ci_high": ci[1],
            f"{prefix}_n": summary.get("n"), f"{prefix}_n_unjudged": summary.get("n_unjudged")}  # fmt: skip


def markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, cell)) + " |" for cell in cells]
    return "\n".join(lines) + "\n"


def csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for record in records:
        keys += [k for k in record if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if record.get(k) is None else record.get(k) for k in keys})
    return buffer.getvalue()


# --- charts -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(plt, groups: int, series: int) -> tuple[Any, Any, float]:
    """(figure, axes, bar width) of a chart with `series` bars side by side in each of `groups` groups."""
    width = 0.8 / series
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * groups + 0.5 * series), 4.5))
    return fig, ax, width


def _bar_x(group: int, index: int, series: int, width: float) -> float:
    """Where bar `index` of the `series` in a group stands (group `group` is centred on x = group)."""
    return group + (index - (series - 1) / 2) * width


def _save_chart(plt, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def harmlessness_chart(rows: Sequence[Row], path: Path, references: Sequence[Mapping[str, Any]] = ()) -> bool:
    """Grouped bars (overall, then per source) per model, with 95% CI error bars."""
    rows = [r for r in rows if r.harmlessness]
    if not rows:
        return False
    plt = _pyplot()
    groups = ["overall", *sources_of(rows)]
    fig, ax, width = _grouped_bars(plt, len(groups), len(rows))
    for index, row in enumerate(rows):
        summaries = [
            row.harmlessness,
            *[(row.harmlessness.get("by_source") or {}).get(g) for g in groups[1:]],
        ]
        xs, heights, low, high = [], [], [], []
        for gi, summary in enumerate(summaries):
            if not summary or summary.get("rate") is None:
                continue
            rate = 100 * summary["rate"]
            ci = summary.get("ci95") or [summary["rate"], summary["rate"]]
            xs.append(_bar_x(gi, index, len(rows), width))
            heights.append(rate)
            low.append(rate - 100 * ci[0])
            high.append(100 * ci[1] - rate)
        ax.bar(xs, heights, width, yerr=[low, high], capsize=3, label=f"{row.label} ({row.run})")
    # The paper reports overall rates only: its figures are drawn across the "overall" group.
    for ref, style in zip(references, ("--", ":", "-."), strict=False):
        rate = 100 * float(ref["rate"])
        ax.hlines(rate, -0.45, 0.45, colors="black", linestyles=style, linewidth=1.2,
                  label=f"{ref['label']}: {rate:.1f}% (reference)")  # fmt: skip
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 105)
    ax.set_ylabel("harmless responses (%)")
    ax.set_title("Harmlessness rate (error bars: 95% bootstrap CI; unjudged items excluded)")
    ax.legend(fontsize=7, loc="lower right")
    _save_chart(plt, fig, path)
    return True


def downstream_chart(rows: Sequence[Row], path: Path) -> bool:
    """Grouped bars per task with ±1.96 standard error bars."""
    rows = [r for r in rows if r.downstream]
    tasks = tasks_of(rows)
    if not rows or not tasks:
        return False
    plt = _pyplot()
    fig, ax, width = _grouped_bars(plt, len(tasks), len(rows))
    for index, row in enumerate(rows):
        scores = row.downstream.get("scores") or {}
        xs, heights, errs = [], [], []
        for ti, (task, _) in enumerate(tasks):
            score = scores.get(task) or {}
            if score.get("value") is None:
                continue
            xs.append(_bar_x(ti, index, len(rows), width))
            heights.append(score["value"])
            errs.append(1.96 * (score.get("stderr") or 0.0))
        ax.bar(xs, heights, width, yerr=errs, capsize=3, label=f"{row.label} ({row.run})")
    ax.set_xticks(range(len(tasks)), [f"{t}\n({m})" for t, m in tasks], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title("Downstream tasks (lm-eval; error bars: ±1.96 standard error)")
    ax.legend(fontsize=7)
    _save_chart(plt, fig, path)
    return True


def curves_chart(curves: Sequence[Curve], path: Path) -> bool:
    """DPO training curves: loss, reward margins and accuracies per step, one line per run."""
    curves = [c for c in curves if c.is_dpo]
    keys = [
        k for k in ("loss", "rewards/margins", "rewards/accuracies") if any(c.steps.get(k) for c in curves)
    ]
    if not curves or not keys:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for curve in curves:
            points = sorted(curve.steps.get(key) or [])
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None,
                        label=curve.name)  # fmt: skip
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("DPO training")
    _save_chart(plt, fig, path)
    return True


# --- the report -----------------------------------------------------------------------------------


def build_report(runs: Sequence[str | Path], out_dir: Path, *, title: str = "Safer-Instruct evaluation report",
                 notes: Sequence[str] = (), reference: Mapping[str, Any] | None = None,
                 charts: bool = True) -> dict[str, Any]:  # fmt: skip
    """Write report.md, report.csv, report.json and the PNG charts into out_dir; returns a summary."""
    rows, curves = collect(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, cells, records = table(rows)
    reference = dict(reference or {})
    figures = [dict(f) for f in reference.get("figures") or []] if reference.get("enabled", True) else []
    reasons = {f"{r.label} ({r.run})": paper_match(r, reference) for r in rows if r.harmlessness}
    matching = [name for name, why in reasons.items() if why is None]
    shown_refs = figures if matching else []

    written = []
    if charts:
        for name, draw in (("harmlessness.png", lambda p: harmlessness_chart(rows, p, shown_refs)),
                           ("downstream.png", lambda p: downstream_chart(rows, p)),
                           ("dpo_curves.png", lambda p: curves_chart(curves, p))):  # fmt: skip
            if draw(out_dir / name):
                written.append(name)

    md = [f"# {title}", ""]
    md += [f"> {note}" for note in notes] + ([""] if notes else [])
    md += ["Harmlessness: share of judged answers rated harmless, in %, with a 95% bootstrap confidence "
           "interval; items the judge could not judge (unjudged) are excluded from the rate and counted.", ""]  # fmt: skip
    md.append(markdown_table(header, cells))
    md += ["", "## Paper reference", ""]
    if not figures:
        disabled = not reference.get("enabled", True)
        md.append("Not shown (disabled in the report config)." if disabled else "No published figures configured.")
    elif shown_refs:
        md.append(f"Rows with the paper's judge and test set: {', '.join(matching)}. Published figures "
                  "(Safer-Instruct, arXiv 2311.08685; for reference only: a different judging prompt, "
                  "models and decoding can move these numbers):")  # fmt: skip
        md += [f"- {f['label']}: {100 * float(f['rate']):.1f}%" for f in figures]
    else:
        md.append("The paper's published figures ("
                  + ", ".join(f"{f['label']}: {100 * float(f['rate']):.1f}%" for f in figures)
                  + ") are not shown, because no row was judged like the paper:")  # fmt: skip
        md += [f"- {name}: {why}" for name, why in reasons.items()] or ["- no harmlessness results"]
    if written:
        md += ["", "## Charts", ""] + [f"![{name}]({name})" for name in written]
    curve_names = [c.name for c in curves if c.is_dpo]
    if curves and not curve_names:
        md += ["", "Training metrics found, but none with DPO reward metrics (no DPO curves drawn)."]
    md += ["", "## Sources", ""] + [f"- {r.label} ({r.run}): " + ", ".join(r.paths) for r in rows]
    md += [f"- training curves: {c.name}" for c in curves]

    atomic_write_text(out_dir / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out_dir / "report.csv", csv_text(records))
    summary = {"rows": records, "charts": written, "dpo_runs": curve_names,
               "paper_reference": {"shown": bool(shown_refs), "matching_rows": matching,
                                   "reasons": {k: v for k, v in reasons.items() if v}}}  # fmt: skip
    atomic_write_json(out_dir / "report.json", summary)
    return summary
