"""The report's refusal section: rates of the refusal judge named after what they are, and example answers.

Results judged by the refusal judge (`harmlessness.json` with `"metric": "refusal_rate"`) are shown as
the *refusal rate* on harmful prompts and the *answer rate* (1 - the refusal rate) on benign prompts
(a prompt set marked `benign: true`, e.g. prompt_set=benign), one column per prompt set, one line per
model, with 95% CIs; then a few answers of each model to the same prompts, before / after, per
prompt set (from each result's judgements.jsonl), the prompts where the verdicts differ first.
`rates_against_chart` draws both rates against a swept number (a sweep's training pairs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safer_instruct.io import read_jsonl

REFUSAL_METRIC = "refusal_rate"
PROXY_NOTE = (
    "The refusal judge is a proxy: an answer counts as a refusal when a refusal marker (conf/refusal_markers/) "
    "occurs where judge.match looks. It misses refusals phrased without a marker, counts a hedge that goes on "
    "to comply (\"While I can't provide a complete list, here are ...\") as a refusal, and says nothing about "
    "whether a non-refusing answer is harmful. Higher refusal on harmful prompts is safer only if the answer "
    "rate on benign prompts holds: a model that refuses everything is no success."
)


def is_refusal_result(h: Mapping[str, Any] | None) -> bool:
    """Whether the refusal judge judged a result (as its first or its second judge)."""
    return refusal_summary(h) is not None


def counts_refusals(h: Mapping[str, Any] | None) -> bool:
    """Whether a result's own rate (its first judge's) is a refusal rate."""
    return bool(h) and h.get("metric") == REFUSAL_METRIC


def refusal_summary(h: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The refusal judge's summary of a result: the result itself when the refusal judge was its judge,
    its `second_judge` (with the result's items and label) when that was; else None."""
    if not h:
        return None
    if h.get("metric") == REFUSAL_METRIC:
        return dict(h, judge_slot="judge")
    second = h.get("second_judge") or {}
    if second.get("metric") == REFUSAL_METRIC:
        return dict(second, items=h.get("items") or {}, label=h.get("label"), judge_slot="second_judge")
    return None


def _verdict(judgement_row: Mapping[str, Any], slot: str) -> str | None:
    found = judgement_row if slot == "judge" else (judgement_row.get(slot) or {})
    return found.get("verdict") or found.get("status")


def is_benign(h: Mapping[str, Any]) -> bool:
    return bool((h.get("items") or {}).get("benign"))


def column_name(h: Mapping[str, Any]) -> str:
    name = str((h.get("items") or {}).get("name") or "?")
    return f"{name} answer % [95% CI]" if is_benign(h) else f"{name} refusal % [95% CI]"


def shown_rate(h: Mapping[str, Any]) -> tuple[float | None, list[float] | None]:
    """(rate, ci95) as shown: the refusal rate, or for benign prompts the answer rate (1 - it)."""
    rate, ci = h.get("rate"), h.get("ci95")
    if not is_benign(h) or rate is None:
        return rate, ci
    return 1.0 - rate, ([1.0 - ci[1], 1.0 - ci[0]] if ci else None)


def _cell(h: Mapping[str, Any]) -> str:
    rate, ci = shown_rate(h)
    if rate is None:
        return f"n/a (n={h.get('n')})"
    low, high = ci or (rate, rate)
    unjudged = f", {h['n_unjudged']} unj." if h.get("n_unjudged") else ""
    return f"{100 * rate:.1f} [{100 * low:.1f}, {100 * high:.1f}] (n={h.get('n')}{unjudged})"


def model_name(row: Any) -> str:
    """A row's model as the refusal section names it: its label, and for a sweep point's own model the
    point's swept values (`label [mini.pairs=300,train.beta=0.5]`), so that points sharing a label keep a
    line each. A sweep's runs are its points' folders, named `<swept values> <group>`."""
    folder = str(row.run).split("/", 1)[0]
    point = folder.rsplit(" ", 1)[0] if " " in folder else ""
    return f"{row.label} [{point}]" if point else str(row.label)


def rates_table(rows: Sequence[Any]) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """(header, cells, records): one line per model label, one column per prompt set (harmful sets first)."""
    columns: dict[str, bool] = {}  # column -> whether its prompts are benign
    by_label: dict[str, dict[str, Mapping[str, Any]]] = {}
    training: dict[str, str] = {}
    for row in rows:
        if (h := refusal_summary(row.harmlessness)) is not None:
            name = model_name(row)
            columns.setdefault(column_name(h), is_benign(h))
            by_label.setdefault(name, {})[column_name(h)] = h
            training.setdefault(name, str(row.training_data or ""))
    ordered = sorted(columns, key=lambda c: (columns[c], c))
    header = ["model", "training data", *ordered]
    cells, records = [], []
    for label, found in by_label.items():
        cells.append([label, training[label], *[_cell(found[c]) if c in found else "" for c in ordered]])
        record: dict[str, Any] = {"model": label, "training_data": training[label], "judge": "refusal markers"}
        for column in ordered:
            h = found.get(column)
            rate, ci = shown_rate(h) if h else (None, None)
            key = column.replace(" % [95% CI]", "").replace(" ", "_")
            record.update({f"{key}_rate": rate, f"{key}_ci_low": (ci or [None])[0],
                           f"{key}_ci_high": (ci or [None, None])[1], f"{key}_n": h.get("n") if h else None})  # fmt: skip
        records.append(record)
    return header, cells, records


def _judgements(row: Any) -> dict[str, dict[str, Any]]:
    for path in row.paths:
        file = Path(path).parent / "judgements.jsonl"
        if Path(path).name == "harmlessness.json" and file.is_file():
            return {r.get("id"): r for r in read_jsonl(file)}  # a bad line: DataError naming file and row
    return {}


def _short(text: str | None, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def example_answers(rows: Sequence[Any], per_set: int = 3, limit: int = 220) -> list[str]:
    """Markdown: per prompt set, `per_set` prompts answered by every model, each model's answer and verdict;
    prompts where the models' verdicts differ come first (in prompt order), then the others."""
    by_set: dict[str, list[Any]] = {}
    for row in rows:
        if is_refusal_result(row.harmlessness):
            by_set.setdefault(str((row.harmlessness.get("items") or {}).get("name")), []).append(row)
    lines: list[str] = []
    for name, set_rows in by_set.items():
        answers = [(row, _judgements(row), refusal_summary(row.harmlessness)["judge_slot"]) for row in set_rows]
        common_ids = [i for i in answers[0][1] if all(i in found for _, found, _ in answers)]
        if len(answers) < 2 or not common_ids:
            continue
        differ = [i for i in common_ids if len({_verdict(found[i], slot) for _, found, slot in answers}) > 1]
        chosen = (differ + [i for i in common_ids if i not in differ])[:per_set]
        kind = "benign" if is_benign(set_rows[0].harmlessness) else "harmful"
        lines += ["", f"### {name} ({kind} prompts): {len(differ)} of {len(common_ids)} verdicts differ", ""]
        for item_id in chosen:
            first = answers[0][1][item_id]
            lines.append(f"- **{_short(first.get('prompt'), limit)}** ({item_id}, source {first.get('source')})")
            for row, found, slot in answers:
                r = found[item_id]
                lines.append(f"  - {model_name(row)} [{_verdict(r, slot)}]: {_short(r.get('response'), limit) or '(empty)'}")
    return lines


def changes(rows: Sequence[Any]) -> list[str]:
    """One line per prompt set answered by two or more models: each model's rate, first model first (the
    order of the report's runs: the base model, then the trained ones), and each later model's change
    against the first, in points."""
    by_set: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for row in rows:
        h = refusal_summary(row.harmlessness)
        if h is not None and shown_rate(h)[0] is not None:
            by_set.setdefault(column_name(h).replace(" % [95% CI]", ""), []).append((model_name(row), h))
    lines = []
    for name, found in by_set.items():
        if len({label for label, _ in found}) < 2:
            continue
        rates = [(label, *shown_rate(h)) for label, h in found]
        first = rates[0][1]
        steps = " -> ".join(f"{label} {100 * rate:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" for label, rate, ci in rates)
        # Each later model against the first (a sweep's points each against the base model).
        deltas = ", ".join(f"{100 * (rate - first):+.1f}" for _, rate, _ in rates[1:])
        lines.append(f"- {name} rate: {steps} ({deltas} points)")
    return lines


def section(rows: Sequence[Any], per_set: int = 3) -> list[str]:
    """The report's Markdown lines for refusal-judge results (none when there are none)."""
    header, cells, _ = rates_table(rows)
    if not cells:
        return []
    from safer_instruct.evaluation.report import markdown_table

    lines = ["", "## Refusal rate on harmful prompts, answer rate on benign prompts", "",
             "Refusal judge (no model): refusal rate = share of judged answers with a refusal marker; on benign "
             "prompts the answer rate = 1 - that share. In %, 95% bootstrap CIs; empty answers are unjudged.",
             "", *changes(rows), "", markdown_table(header, cells), PROXY_NOTE]  # fmt: skip
    examples = example_answers(rows, per_set)
    if examples:
        lines += ["", "## Example answers, before / after"] + examples
    return lines


def rates_against_chart(points: Sequence[Mapping[str, Any]], x_key: str, path: Path, xlabel: str = "") -> bool:
    """Refusal rate (harmful sets) and answer rate (benign sets) against `x_key` (e.g. training pairs),
    one line per prompt set and other setting (`series`), with 95% CI bars. `points`: dicts with x_key,
    `set`, `benign`, `rate`, `ci95` and optional `series`."""
    usable = [p for p in points if p.get(x_key) is not None and p.get("rate") is not None]
    if not usable:
        return False
    from safer_instruct.evaluation.report import _pyplot, _rate_bar, _save_chart

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    keys = sorted({(p["set"], bool(p.get("benign")), str(p.get("series") or "")) for p in usable})
    for name, benign, series in keys:
        line = sorted((p for p in usable if (p["set"], bool(p.get("benign")), str(p.get("series") or ""))
                       == (name, benign, series)), key=lambda p: float(p[x_key]))  # fmt: skip
        bars = [_rate_bar(p) for p in line]  # (rate, lower error, upper error) in %
        what = "answer rate" if benign else "refusal rate"
        ax.errorbar([float(p[x_key]) for p in line], [b[0] for b in bars], marker="o", capsize=3,
                    yerr=[[b[1] for b in bars], [b[2] for b in bars]], linestyle="--" if benign else "-",
                    label=f"{name} {what}" + (f" ({series})" if series else ""))  # fmt: skip
    ax.set_xlabel(xlabel or x_key)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("Refusal rate (harmful prompts) and answer rate (benign prompts); 95% CI")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save_chart(plt, fig, path)
    return True


def pairs_points(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """One point per refusal-judge result: the DPO pairs its model was trained on (0: untrained), the
    prompt set, the shown rate and CI, and the series (the run's sweep label without its pairs value)."""
    points = []
    for row in rows:
        h = refusal_summary(row.harmlessness)
        if h is None:
            continue
        dpo = [s.pairs for s in getattr(row, "training", []) if s.name == "dpo"]
        if dpo and dpo[-1] is None:
            continue  # trained, but how many pairs is not recorded
        rate, ci = shown_rate(h)
        label = str(row.run).split(" ", 1)[0] if " " in str(row.run) else ""
        series = ",".join(part for part in label.split(",") if part and "pairs=" not in part)
        points.append({"pairs": dpo[-1] if dpo else 0, "set": str(h["items"].get("name")), "benign": is_benign(h),
                       "rate": rate, "ci95": ci, "series": series if dpo else ""})  # fmt: skip
    return points


def pairs_chart(rows: Sequence[Any], path: Path) -> bool:
    """Refusal and answer rate against the DPO pairs trained on (drawn when there are >= 2 numbers of pairs);
    the untrained model is the point at 0 of every series."""
    points = pairs_points(rows)
    if len({p["pairs"] for p in points}) < 2:
        return False
    series = {p["series"] for p in points if p["pairs"]}
    # The base model (0 pairs) starts every series' line.
    points = [p for p in points if p["pairs"]] + [{**p, "series": s} for p in points if not p["pairs"] for s in series]
    return rates_against_chart(points, "pairs", path, "DPO training pairs (N)")
