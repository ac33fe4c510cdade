"""The comparison report: finished runs in, one table (Markdown + CSV), bar charts and curves out.

`collect(runs)` finds every `harmlessness.json`, `downstream.json` and training `metrics.jsonl` under
the given run folders (a stage's own folder, or an experiment folder holding several). One row per
evaluated model (label) per run folder: harmlessness overall and per prompt source with 95% CIs,
unjudged counts, the judge, the second judge's rate beside the first and their agreement (Cohen's
kappa) when present, pairwise win rate, downstream scores, and the training of the evaluated model.

Training: the model a row evaluates (`model.path` in the evaluation's saved `config.yaml`) is followed
back through the `train_summary.json` of the stage that wrote it (`<stage dir>/model`) and of the
stages it started from (`started_from`): per stage, the pairs (rows) trained on, their tokens and the
optimizer steps. Rows whose pairs differ from the other trained rows' are marked unmatched.

The paper's published harmlessness rates (94.7% Alpaca + Safer-Instruct, 86.3% Alpaca + human-annotated
safety data) were judged by Claude 3 (known: the paper's abstract reports 94.7% "when evaluated with
Claude 3", the 86.3% baseline in the same comparison; that the engine is claude-3-opus-20240229 is
inferred: it is the one Claude 3 model the paper names). They appear only beside a rate judged by
that model (`paper_reference.judge_model`, first or second judge of a row) on the 900-prompt release
test set (300 prompts per source), never beside another judge's rate; otherwise the report says why
they are not shown.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from safer_instruct.errors import ConfigError, DataError
from safer_instruct.evaluation import refusal_report
from safer_instruct.io import atomic_write_json, atomic_write_text, iter_rows
from safer_instruct.schema import node_values

log = logging.getLogger(__name__)

SOURCE_ORDER = ("hh", "beaver", "si")
CURVE_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")
# `stage` in train_summary.json -> the short name the report shows.
TRAINING_STAGES = {"train_sft": "sft", "train_dpo": "dpo", "train_reverse": "reverse"}
TRAIN_SUMMARY = "train_summary.json"
# The data preset of the published release (conf/data/safer_instruct_release.yaml), as rows name it.
RELEASE_TRAINING_DATA = "safer_instruct_release"


# --- the paper reference --------------------------------------------------------------------------


@dataclass
class PaperFigure:
    """One published harmlessness rate of the paper."""

    label: str = field(metadata={"help": "What the figure is, as shown in the report."})
    rate: float = field(metadata={"help": "The published rate as a share (0.947 for 94.7%)."})
    source: str = field(default="", metadata={"help": "Where the figure and its judge are stated, and whether "
                                                      "that is known or inferred."})  # fmt: skip

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.rate) <= 1.0:
            raise ConfigError(f"paper_reference.figures: rate of '{self.label}' must be a share in [0, 1], got {self.rate}")
        self.rate = float(self.rate)


@dataclass
class PaperReference:
    """`paper_reference` of conf/report.yaml: the published figures and how they were judged."""

    enabled: bool = field(default=True, metadata={"help": "Show the published figures where a row is comparable."})
    judge_model: str = field(default="", metadata={
        "help": "The judge that produced the published figures; a row's rate is compared only when this model (or a "
                "name starting with it) judged it, as the row's first or second judge. Needed with figures."})  # fmt: skip
    judge_source: str = field(default="", metadata={"help": "Where the judge of the figures is stated, known or inferred."})
    n: int = field(default=0, metadata={"help": "Prompts of the paper's test set. Needed with figures."})
    sources: dict[str, int] = field(default_factory=dict, metadata={"help": "Prompts per source of the paper's test set."})
    figures: list[PaperFigure] = field(default_factory=list, metadata={"help": "The published rates."})

    def __post_init__(self) -> None:
        if self.figures and (not self.judge_model or self.n < 1):
            raise ConfigError("paper_reference: figures need the judge that produced them (judge_model) and the size of "
                              f"the test set they were judged on (n), got judge_model='{self.judge_model}' n={self.n}")

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | None) -> PaperReference:
        value = node_values(value, cls, "paper_reference")
        figures = []
        for index, figure in enumerate(value.pop("figures", None) or []):
            if not isinstance(figure, Mapping) or not {"label", "rate"} <= set(figure):
                raise ConfigError(f"paper_reference.figures[{index}]: give label and rate (and source), got {figure!r}")
            extra = sorted(set(figure) - {f.name for f in fields(PaperFigure)})
            if extra:
                raise ConfigError(f"paper_reference.figures[{index}]: unknown key(s) {', '.join(extra)}")
            figures.append(PaperFigure(**figure))
        sources = {str(k): int(v) for k, v in (value.pop("sources", None) or {}).items()}
        return cls(**value, sources=sources, figures=figures)

    def judged_by_it(self, model: str) -> bool:
        return bool(model) and (model == self.judge_model or model.startswith(self.judge_model))


def paper_comparison(h: dict[str, Any],
                     reference: PaperReference) -> tuple[tuple[str, dict[str, Any]] | None, str | None]:  # fmt: skip
    """((slot, summary) of the rate of a harmlessness result `h` judged like the paper's figures, None) or
    (None, why not). Its first judge's rate is looked at first, then its second judge's."""
    judges = [("judge", str((h.get("judge") or {}).get("model") or ""), h)]
    if h.get("second_judge"):
        judges.append(("second_judge", str(h["second_judge"].get("model") or ""), h["second_judge"]))
    reasons = []
    chosen = next(((slot, summary) for slot, model, summary in judges if reference.judged_by_it(model)), None)
    if chosen is None:
        names = ", ".join(model or "?" for _, model, _ in judges)
        reasons.append(f"no rate judged by {reference.judge_model}, the judge of the paper's figures (this row's "
                       f"judge{'s' if len(judges) > 1 else ''}: {names})")  # fmt: skip
    have = {str(k): int(v.get("n", 0)) for k, v in (h.get("by_source") or {}).items()}
    if have != reference.sources or int(h.get("n", 0)) != reference.n:
        reasons.append(f"prompts are not the paper's test set ({h.get('n')} prompts, sources {have}; "
                       f"the paper's: {reference.n} prompts, {reference.sources})")  # fmt: skip
    return (None, "; ".join(reasons)) if reasons else (chosen, None)


# --- rows -----------------------------------------------------------------------------------------


@dataclass
class TrainingStage:
    """One training stage of the model a row evaluates, read from the stage's `train_summary.json`."""

    name: str
    path: str
    pairs: int | None = None
    tokens: int | None = None
    optimizer_steps: int | None = None
    sample: dict[str, Any] | None = None
    started_from: str | None = None
    rows_without_rejected: int | None = None

    @classmethod
    def read(cls, path: Path) -> TrainingStage:
        summary = _load_json(path)
        data = summary.get("data") or {}
        started = summary.get("started_from") or {}
        stats = _load_json(path.parent / "data_stats.json") if (path.parent / "data_stats.json").is_file() else {}
        skipped = ((stats.get("load") or {}).get("notes") or {}).get("sft_only_rows_skipped_by_dpo")
        # Runs from before `data.pairs` / `data.optimizer_steps` existed: `train_rows` and `global_step`
        # (the trainer's optimizer steps) say the same; their tokens are unknown.
        return cls(
            name=TRAINING_STAGES.get(str(summary.get("stage")), str(summary.get("stage") or path.parent.name)),
            path=str(path),
            pairs=_int_or_none(data.get("pairs", data.get("train_rows"))),
            tokens=_int_or_none(data.get("tokens")),
            optimizer_steps=_int_or_none(data.get("optimizer_steps", summary.get("global_step"))),
            sample=data.get("sample") if isinstance(data.get("sample"), dict) else None,
            started_from=started.get("adapter") or started.get("model"),
            rows_without_rejected=_int_or_none(skipped),
        )

    def cell(self) -> str:
        """`sft 1,000 / 250,000 / 15`: pairs / tokens / optimizer steps, `?` where not recorded."""
        counts = (self.pairs, self.tokens, self.optimizer_steps)
        return f"{self.name} " + " / ".join("?" if n is None else f"{n:,}" for n in counts)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Row:
    """One line of the table: a model (label) evaluated in one run folder."""

    run: str
    label: str
    training_data: str | None = None
    harmlessness: dict[str, Any] | None = None
    downstream: dict[str, Any] | None = None
    paths: list[str] = field(default_factory=list)
    model_path: str | None = None
    training: list[TrainingStage] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.label} ({self.run})"


def judge_name(h: Mapping[str, Any] | None) -> str:
    """`model (template id)` of the judge of a result (the first judge's, or a second judge's own; "" for
    none); a judge whose rate counts refusals (judge=refusal), not harmless answers, says so."""
    if not h:
        return ""
    judge = (h.get("judge") if "judge" in h else h) or {}
    template = (judge.get("template") or {}).get("id", "")
    name = f"{judge.get('model', '?')} ({template})" if template else str(judge.get("model", "?"))
    return name + (", refusal rate" if refusal_report.counts_refusals(h) else "")


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


def evaluated_model(result_path: Path) -> str | None:
    """`model.path` of the evaluation that wrote `result_path` (its saved config.yaml), if any."""
    config = result_path.parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"not a readable config ({err})", path=str(config)) from None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    path = model.get("path") if isinstance(model, dict) else None
    return str(path) if path else None


def training_chain(model_path: str | None, limit: int = 8) -> list[TrainingStage]:
    """The training stages that produced a model, first stage first: the stage whose out_dir holds the
    model (`<stage dir>/model` or `/adapter`, beside its train_summary.json), then the one it started
    from, and so on. A hub id or a folder without a train_summary.json ends the chain."""
    stages: list[TrainingStage] = []
    seen: set[Path] = set()
    while model_path and len(stages) < limit:
        folder = Path(model_path).expanduser()
        stage_dir = folder.parent if folder.name in ("model", "adapter") else folder
        summary = stage_dir / TRAIN_SUMMARY
        if not summary.is_file() or stage_dir.resolve() in seen:
            break
        seen.add(stage_dir.resolve())
        stage = TrainingStage.read(summary)
        stages.append(stage)
        model_path = stage.started_from
    return stages[::-1]


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
        # A downstream result joins the first row of its label; a second result of a kind starts a new row.
        for kind in ("harmlessness", "downstream"):
            for path in sorted(base.rglob(f"{kind}.json")):
                data = _load_json(path)
                label = str(data.get("label") or path.parent.name)
                row = by_key.get((base.name, label))
                if row is None or getattr(row, kind) is not None:
                    row = Row(_run_name(base, path.parent), label)
                    rows.append(row)
                    by_key.setdefault((base.name, label), row)
                setattr(row, kind, data)
                row.training_data = row.training_data or data.get("training_data")
                row.model_path = row.model_path or evaluated_model(path)
                row.paths.append(str(path))
                found += 1
        for path in sorted(base.rglob("metrics.jsonl")):
            curves.append(read_curve(path, _run_name(base, path.parent)))
            found += 1
        if not found:
            raise ConfigError(f"runs: nothing to report under {base} (no harmlessness.json, downstream.json "
                              "or metrics.jsonl)")  # fmt: skip
    for row in rows:
        row.training = training_chain(row.model_path)
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


def unmatched_rows(rows: Sequence[Row]) -> dict[str, str]:
    """Row name -> why its training is not matched with the other trained rows'.

    Per stage (sft, dpo, ...), the pair count most trained rows share is the reference: a row with
    another count is unmatched (all of them when no count is shared by more rows than any other). Beside
    other trained rows, a run that says it was not drawn to the matched size (`data.sample.matched:
    false`) is unmatched too. Rows without training (a released model) and stages of unknown size are
    not compared; a single trained row has nothing to be matched with.
    """
    reasons: dict[str, list[str]] = {}
    trained = [row for row in rows if row.training]
    names = list(dict.fromkeys(stage.name for row in trained for stage in row.training))
    for name in names:
        counts = {row.name: stage.pairs for row in trained for stage in row.training
                  if stage.name == name and stage.pairs is not None}  # fmt: skip
        tally = Counter(counts.values()).most_common()
        if len(tally) < 2:
            continue
        reference = tally[0][0] if tally[0][1] > tally[1][1] else None
        for row_name, pairs in counts.items():
            if pairs != reference:
                others = sorted({p for r, p in counts.items() if r != row_name and p != pairs})
                reasons.setdefault(row_name, []).append(
                    f"{name} trained on {pairs:,} pairs, other rows on {' / '.join(f'{p:,}' for p in others)}"
                )
    for row in trained if len(trained) > 1 else []:
        for stage in row.training:
            if stage.sample and stage.sample.get("matched") is False:
                reasons.setdefault(row.name, []).append(f"{stage.name} was not drawn to the matched size (by config)")
    return {name: "; ".join(why) for name, why in reasons.items()}


def _pct(value: Any) -> str:
    return "" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _rate_cell(summary: Mapping[str, Any] | None, key: str = "rate") -> str:
    if not summary or summary.get(key) is None:
        return "n/a" if summary else ""
    ci = summary.get("ci95") or [None, None]
    text = f"{_pct(summary[key])} [{_pct(ci[0])}, {_pct(ci[1])}]"
    return text + (f" ({summary['n_unjudged']} unj.)" if summary.get("n_unjudged") else "")


def _training_cell(row: Row, unmatched: Mapping[str, str]) -> str:
    if not row.training:
        return ""
    return "; ".join(stage.cell() for stage in row.training) + (" (unmatched)" if row.name in unmatched else "")


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """(Markdown header, Markdown cells, CSV records) of the comparison table.

    With a second judge on any row, its model and rate stand beside the first judge's, then kappa.
    """
    sources, tasks = sources_of(rows), tasks_of(rows)
    unmatched = unmatched_rows(rows)
    two_judges = any((r.harmlessness or {}).get("second_judge") for r in rows)
    trained = any(r.training for r in rows)
    header = ["run", "model", "training data"]
    header += ["training: stage pairs / tokens / optimizer steps"] if trained else []
    header += ["prompts", "judge", "harmless % [95% CI]"]
    header += ["second judge", "second judge harmless % [95% CI]"] if two_judges else []
    header += ["judge kappa", "n", "unjudged"] + [f"{s} harmless %" for s in sources] + ["pairwise win %"]
    header += [f"{t} ({m})" for t, m in tasks]
    cells, records = [], []
    for row in rows:
        h = row.harmlessness or {}
        by_source = h.get("by_source") or {}
        pairwise = h.get("pairwise") or {}
        second = h.get("second_judge") or {}
        first_judge, second_judge = judge_name(h), judge_name(second)
        kappa = (second.get("agreement") or {}).get("cohen_kappa")
        # A refusal judge's rate is a refusal rate: it stands in the refusal section, never under "harmless".
        second_rate = {} if refusal_report.counts_refusals(second) else second
        scores = (row.downstream or {}).get("scores") or {}
        prompts = (h.get("items") or {}).get("name", "")
        if h.get("items", {}).get("mode") == "pre-generated":
            prompts = f"{prompts} ({h['items'].get('column')} answers)"
        cell = [row.run, row.label, row.training_data or ""]
        cell += [_training_cell(row, unmatched)] if trained else []
        cell += [prompts, first_judge, _rate_cell(h) if h else ""]
        cell += [second_judge, _rate_cell(second_rate) if second_rate else ""] if two_judges else []
        cell += ["" if kappa is None else f"{kappa:.2f}", str(h.get("n", "")), str(h.get("n_unjudged", ""))]
        cell += [_rate_cell(by_source.get(s)) for s in sources]
        cell += [_rate_cell(pairwise, "win_rate") if pairwise else ""]
        record: dict[str, Any] = {"run": row.run, "model": row.label, "training_data": row.training_data,
                                  "prompts": prompts, "judge": first_judge}  # fmt: skip
        record.update(_rate_fields("harmless", h))
        for s in sources:
            record.update(_rate_fields(f"harmless_{s}", by_source.get(s)))
        record["second_judge"] = second_judge
        record.update(_rate_fields("second_judge_harmless", second_rate))
        record.update({f"pairwise_{k}": v for k, v in _rate_fields("win", pairwise, "win_rate").items()})
        record["judge_kappa"] = kappa
        for stage in row.training:
            sample = stage.sample or {}
            record.update({f"train_{stage.name}_pairs": stage.pairs, f"train_{stage.name}_tokens": stage.tokens,
                           f"train_{stage.name}_optimizer_steps": stage.optimizer_steps,
                           f"train_{stage.name}_sample_size": sample.get("size"),
                           f"train_{stage.name}_sample_seed": sample.get("seed"),
                           f"train_{stage.name}_sample_stratified_by": sample.get("stratified_by")})  # fmt: skip
        record["train_pairs_matched"] = (row.name not in unmatched) if row.training else None
        # Downstream scores end both the Markdown line and the CSV record.
        for task, metric in tasks:
            score = scores.get(task) or {}
            value, stderr = score.get("value"), score.get("stderr")
            cell.append("" if value is None else f"{value:.3f}" + ("" if stderr is None else f" ± {stderr:.3f}"))
            record.update({f"{task}_{metric}": value, f"{task}_{metric}_stderr": stderr})
        cells.append(cell)
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
    """One column per key of any record, in order of appearance; a missing key or None is an empty cell."""
    keys = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")  # csv writes None as ""
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


# --- charts -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bar_chart(path: Path, groups: Sequence[str], series: Sequence[tuple[str, Sequence[Any]]], *,
                       ylim: float, ylabel: str, title: str, tick_size: str | int = "medium",
                       legend_loc: str = "best") -> None:  # fmt: skip
    """Bars of each series side by side in every group (group `i` centred on x = i). `series`: (legend
    label, per group (height, lower error, upper error) or None for no bar)."""
    plt = _pyplot()
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 0.5 * len(series)), 4.5))
    for index, (label, bars) in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * width
        xs = [group + offset for group, bar in enumerate(bars) if bar]
        shown = [bar for bar in bars if bar]
        ax.bar(xs, [b[0] for b in shown], width, yerr=[[b[1] for b in shown], [b[2] for b in shown]], capsize=3,
               label=label)  # fmt: skip
    ax.set_xticks(range(len(groups)), groups, fontsize=tick_size)
    ax.set_ylim(0, ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc=legend_loc)
    _save_chart(plt, fig, path)


def _save_chart(plt, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rate_bar(summary: Mapping[str, Any] | None) -> tuple[float, float, float] | None:
    """(rate, lower error, upper error) in % of a summary with a rate; None without one."""
    if not summary or summary.get("rate") is None:
        return None
    rate = 100 * summary["rate"]
    ci = summary.get("ci95") or [summary["rate"], summary["rate"]]
    return rate, rate - 100 * ci[0], 100 * ci[1] - rate


def harmlessness_chart(rows: Sequence[Row], path: Path) -> bool:
    """Grouped bars (overall, then per source) per model, first judge, with 95% CI error bars."""
    rows = [r for r in rows if r.harmlessness]
    if not rows:
        return False
    sources = sources_of(rows)
    series = []
    for row in rows:
        by_source = row.harmlessness.get("by_source") or {}
        series.append((f"{row.label} ({row.run}): {judge_name(row.harmlessness)}",
                       [_rate_bar(row.harmlessness), *[_rate_bar(by_source.get(s)) for s in sources]]))  # fmt: skip
    _grouped_bar_chart(path, ["overall", *sources], series, ylim=105, ylabel="harmless responses (%)",
                       title="Harmlessness rate, first judge (error bars: 95% bootstrap CI; unjudged items excluded)",
                       legend_loc="lower right")  # fmt: skip
    return True


def paper_chart(compared: Sequence[tuple[Row, str, Mapping[str, Any]]], reference: PaperReference, path: Path) -> bool:
    """The rates judged like the paper's figures (one bar per row, 95% CI), the figures as lines."""
    compared = [c for c in compared if c[2].get("rate") is not None]
    if not compared or not reference.figures:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(compared) + 2), 4.5))
    for index, (row, _, summary) in enumerate(compared):
        rate, below, above = _rate_bar(summary)
        ax.bar([index], [rate], 0.6, yerr=[[below], [above]], capsize=3, label=f"{row.label} ({row.run})")
    for figure, style in zip(reference.figures, ("--", ":", "-."), strict=False):
        ax.axhline(100 * figure.rate, color="black", linestyle=style, linewidth=1.2,
                   label=f"{figure.label}: {100 * figure.rate:.1f}% (published)")  # fmt: skip
    ax.set_xticks(range(len(compared)), [row.label for row, _, _ in compared], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("harmless responses (%)")
    ax.set_title(f"Judged by {reference.judge_model} on the paper's {reference.n} test prompts")
    ax.legend(fontsize=7, loc="lower right")
    _save_chart(plt, fig, path)
    return True


def downstream_chart(rows: Sequence[Row], path: Path) -> bool:
    """Grouped bars per task with ±1.96 standard error bars."""
    rows = [r for r in rows if r.downstream]
    tasks = tasks_of(rows)
    if not rows or not tasks:
        return False
    series = []
    for row in rows:
        bars = []
        for task, _ in tasks:
            score = (row.downstream.get("scores") or {}).get(task) or {}
            err = 1.96 * (score.get("stderr") or 0.0)
            bars.append(None if score.get("value") is None else (score["value"], err, err))
        series.append((f"{row.label} ({row.run})", bars))
    _grouped_bar_chart(path, [f"{t}\n({m})" for t, m in tasks], series, ylim=1.05, ylabel="score", tick_size=8,
                       title="Downstream tasks (lm-eval; error bars: ±1.96 standard error)")  # fmt: skip
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


def what_changed(refusal_rows: Sequence[Row]) -> list[str]:
    """The report's first lines: for each trained model, how its refusal rate on each harmful prompt set and
    its answer rate on each benign set moved against the first model (the base model: runs list it first),
    in points, with both 95% CIs and whether they overlap. From the refusal judge's results only (first or
    second judge); none when fewer than two models have them."""
    by_model: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in refusal_rows:
        summary = refusal_report.refusal_summary(row.harmlessness)
        if summary is not None and refusal_report.shown_rate(summary)[0] is not None:
            name = refusal_report.column_name(summary).replace(" % [95% CI]", "")
            by_model.setdefault(refusal_report.model_name(row), {}).setdefault(name, summary)
    if len(by_model) < 2:
        return []
    (base, base_sets), *trained = by_model.items()

    def pct(rate: float, ci: Sequence[float]) -> str:
        return f"{100 * rate:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    lines = []
    for model, sets in trained:
        # Harmful sets (refusal rates) before benign ones (answer rates).
        shared = sorted(set(base_sets) & set(sets), key=lambda n: (refusal_report.is_benign(sets[n]), n))
        parts = []
        for name in shared:
            (before, before_ci), (after, after_ci) = (refusal_report.shown_rate(h[name]) for h in (base_sets, sets))
            before_ci, after_ci = before_ci or [before, before], after_ci or [after, after]
            apart = after_ci[0] > before_ci[1] or after_ci[1] < before_ci[0]
            set_name, kind = name.rsplit(" ", 1)  # "harmbench refusal", "benign_v1 answer"
            parts.append(f"{kind} rate on {set_name}: {pct(before, before_ci)} → {pct(after, after_ci)} "
                         f"({100 * (after - before):+.1f} points, 95% CIs {'apart' if apart else 'overlap'}; "
                         f"n={sets[name].get('n')})")  # fmt: skip
        if parts:
            lines.append(f"**What changed, {base} → {model}** (refusal judge): " + "; ".join(parts) + ".")
    return lines


def build_report(runs: Sequence[str | Path], out_dir: Path, *, title: str = "Safer-Instruct evaluation report",
                 notes: Sequence[str] = (), reference: Mapping[str, Any] | None = None,
                 charts: bool = True) -> dict[str, Any]:  # fmt: skip
    """Write report.md, report.csv, report.json and the PNG charts into out_dir; returns a summary."""
    paper = PaperReference.from_mapping(reference)
    all_rows, curves = collect(runs)
    # Results of the refusal judge (refusal / answer rates, first or second judge) have their own section;
    # the main table keeps harmlessness rates and downstream scores (not a refusal rate under a
    # "harmless" heading).
    refusal_rows = [r for r in all_rows if refusal_report.is_refusal_result(r.harmlessness)]
    rows = [r for r in all_rows if r.downstream or not refusal_report.counts_refusals(r.harmlessness)]
    out_dir.mkdir(parents=True, exist_ok=True)
    header, cells, records = table(rows)
    _, _, refusal_records = refusal_report.rates_table(refusal_rows)
    figures = paper.figures if paper.enabled else []
    judged = [(row, *paper_comparison(row.harmlessness, paper)) for row in rows if row.harmlessness]
    compared = [(row, *found) for row, found, _ in judged if found is not None]
    reasons = {row.name: str(why) for row, found, why in judged if found is None}
    shown = bool(figures and compared)
    unmatched = unmatched_rows(rows)

    written = []
    if charts:
        harmless_rows = [r for r in rows if not refusal_report.counts_refusals(r.harmlessness)]
        for name, draw in (("harmlessness.png", lambda p: harmlessness_chart(harmless_rows, p)),
                           ("refusal_rates_vs_pairs.png", lambda p: refusal_report.pairs_chart(refusal_rows, p)),
                           ("paper_comparison.png", lambda p: shown and paper_chart(compared, paper, p)),
                           ("downstream.png", lambda p: downstream_chart(rows, p)),
                           ("dpo_curves.png", lambda p: curves_chart(curves, p))):  # fmt: skip
            if draw(out_dir / name):
                written.append(name)

    md = [f"# {title}", ""]
    headline = what_changed(refusal_rows)
    for line in headline:
        md += [line, ""]
    md += [f"> {note}" for note in notes] + ([""] if notes else [])
    if cells:
        md += ["Harmlessness: share of judged answers rated harmless, in %, with a 95% bootstrap confidence "
               "interval; items the judge could not judge (unjudged) are excluded from the rate and counted. "
               "Per-source rates are the first judge's.", ""]  # fmt: skip
        md.append(markdown_table(header, cells))
    if any(r.training for r in rows):
        md += ["Training: per stage of the evaluated model, the pairs (rows) trained on, their tokens and the "
               "optimizer steps (? where the run did not record it)."]  # fmt: skip
    if unmatched:
        md += ["", "Unmatched rows (not trained on the same number of pairs as the other rows, so the comparison "
               "is not like for like):"]  # fmt: skip
        md += [f"- {name}: {why}" for name, why in unmatched.items()]
    release_rows = [r for r in rows if r.training_data == RELEASE_TRAINING_DATA]
    if release_rows:
        md += ["", "Rows trained on the published release: its DPO stage used the hate and self-harm rows only; "
               "the illegal and nsfw files have no `rejected` response (SFT only)."]  # fmt: skip
        for row in release_rows:
            skipped = [s.rows_without_rejected for s in row.training if s.name == "dpo" and s.rows_without_rejected]
            if skipped:
                md.append(f"- {row.name}: {skipped[0]:,} rows without `rejected` left out of DPO.")
    md += refusal_report.section(refusal_rows)
    md += ["", "## Paper reference", ""]
    md += _paper_section(paper, figures, compared, reasons)
    if written:
        md += ["", "## Charts", ""] + [f"![{name}]({name})" for name in written]
    curve_names = [c.name for c in curves if c.is_dpo]
    if curves and not curve_names:
        md += ["", "Training metrics found, but none with DPO reward metrics (no DPO curves drawn)."]
    md += ["", "## Sources", ""] + [f"- {r.name}: " + ", ".join(r.paths + [s.path for s in r.training]) for r in all_rows]
    md += [f"- training curves: {c.name}" for c in curves]

    atomic_write_text(out_dir / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out_dir / "report.csv", csv_text(records + refusal_records))
    summary = {"what_changed": headline, "rows": records, "refusal_rows": refusal_records, "charts": written, "dpo_runs": curve_names, "unmatched": unmatched,
               "paper_reference": {"shown": shown, "judge_model": paper.judge_model,
                                   "matching_rows": [row.name for row, _, _ in compared],
                                   "compared": {row.name: {"judge_slot": slot, "rate": s.get("rate"),
                                                           "ci95": s.get("ci95")} for row, slot, s in compared},
                                   "reasons": reasons}}  # fmt: skip
    atomic_write_json(out_dir / "report.json", summary)
    return summary


def _paper_section(paper: PaperReference, figures: Sequence[PaperFigure],
                   compared: Sequence[tuple[Row, str, Mapping[str, Any]]], reasons: Mapping[str, str]) -> list[str]:  # fmt: skip
    """Markdown lines: the rates judged like the paper's beside its figures, what judged each figure,
    and why the other rows are not compared."""
    if not figures:
        return ["Not shown (disabled in the report config)." if not paper.enabled else "No published figures configured."]
    published = ", ".join(f"{f.label}: {100 * f.rate:.1f}%" for f in figures)
    lines: list[str] = []
    if compared:
        lines += [f"Rates judged by {paper.judge_model} on the paper's test set ({paper.n} prompts, "
                  f"{', '.join(f'{k} {v}' for k, v in paper.sources.items())}), beside the paper's figures "
                  "(Safer-Instruct, arXiv 2311.08685; for reference only: our judging prompt, the models and the "
                  "decoding can move these numbers):", ""]  # fmt: skip
        header = ["row", "judged as", f"harmless % [95% CI] ({paper.judge_model})", *[f"{f.label} %" for f in figures]]
        cells = [[row.name, "first judge" if slot == "judge" else "second judge", _rate_cell(summary),
                  *[f"{100 * f.rate:.1f}" for f in figures]] for row, slot, summary in compared]  # fmt: skip
        lines.append(markdown_table(header, cells))
    else:
        lines.append(f"The paper's published figures ({published}) are not shown, because no row has a rate "
                     f"judged like them (by {paper.judge_model}, on the paper's {paper.n} test prompts):")  # fmt: skip
    judge = paper.judge_model + (f" ({paper.judge_source})" if paper.judge_source else "")
    lines += ["", f"Which judge produced each published figure: {judge}."]
    lines += [f"- {f.label}: {100 * f.rate:.1f}%, judged by {paper.judge_model}" + (f" ({f.source})" if f.source else "")
              for f in figures]  # fmt: skip
    if reasons:
        lines += ["", "Rows not compared with the paper:" if compared else "Why each row is not compared:"]
        lines += [f"- {name}: {why}" for name, why in reasons.items()]
    return lines
