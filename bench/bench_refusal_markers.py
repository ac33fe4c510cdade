"""How well do refusal markers detect refusals? Precision and recall of each `match` rule against answers
labelled by hand.

    python bench/bench_refusal_markers.py [--labels FILE.jsonl] [--out FILE.json]
    python bench/bench_refusal_markers.py --quick --out FILE.json   # the first 20 labelled answers

The labelled answers (tests/data/refusal_labels.jsonl, ours) are answers of SmolLM2-135M-Instruct and of
the same model after DPO on release pairs to HarmBench and to our benign prompts, each labelled `refusal`
or `answer` by hand by the rule in tests/data/refusal_labels.md (which also says how they were made). The refusal judge (safer_instruct.evaluation.refusal, the
marker list of conf/judge/refusal.yaml) reads each answer with each match rule (opening, start,
anywhere); a row per rule gives precision, recall and F1 of "refusal", overall and per model, and the
answers each rule gets wrong. Target: the rule configured in conf/judge/refusal.yaml has the best F1.
"""

from __future__ import annotations

import json
from pathlib import Path

import common

common.setup_env()

import yaml  # noqa: E402

from safer_instruct.evaluation.refusal import MATCH_RULES, REFUSED, RefusalJudge  # noqa: E402
from safer_instruct.paths import CONF_DIR  # noqa: E402

LABELS = common.ROOT / "tests" / "data" / "refusal_labels.jsonl"


def load_labels(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [i for i, r in enumerate(rows, 1) if r.get("label") not in ("refusal", "answer") or not r.get("answer")]
    if bad:
        raise SystemExit(f"{path}: rows {bad[:10]} need a non-empty answer and a label of refusal or answer")
    return rows


def scores(predicted: list[bool], truth: list[bool]) -> dict[str, float | int | None]:
    tp = sum(p and t for p, t in zip(predicted, truth, strict=True))
    fp = sum(p and not t for p, t in zip(predicted, truth, strict=True))
    fn = sum(t and not p for p, t in zip(predicted, truth, strict=True))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "n": len(truth)}


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, "the first 20 labelled answers")
    parser.add_argument("--labels", type=Path, default=LABELS)
    args = parser.parse_args(argv)
    rows = load_labels(args.labels)[: 20 if args.quick else None]
    judge_cfg = yaml.safe_load((CONF_DIR / "judge" / "refusal.yaml").read_text())
    markers_name = next(d["/refusal_markers@markers"] for d in judge_cfg["defaults"] if isinstance(d, dict))
    markers = yaml.safe_load((CONF_DIR / "refusal_markers" / f"{markers_name}.yaml").read_text())
    configured = str(judge_cfg["match"])
    truth = [r["label"] == "refusal" for r in rows]
    results = {}
    for match in MATCH_RULES:
        judge = RefusalJudge.from_config({"markers": markers, "match": match})
        predicted = [judge.judge(r["answer"]).verdict == REFUSED for r in rows]
        by_model = {}
        for model in sorted({r["model"] for r in rows}):
            idx = [i for i, r in enumerate(rows) if r["model"] == model]
            by_model[model] = scores([predicted[i] for i in idx], [truth[i] for i in idx])
        wrong = [{"id": r["id"], "label": r["label"], "answer": r["answer"][:160]}
                 for r, p, t in zip(rows, predicted, truth, strict=True) if p != t]  # fmt: skip
        results[match] = {"overall": scores(predicted, truth), "by_model": by_model, "wrong": wrong}
    best = max(results, key=lambda m: results[m]["overall"]["f1"])
    out = []
    for match, result in results.items():
        overall = result["overall"]
        out.append(common.row(
            f"refusal_markers_{match}",
            metric=f"F1 of 'refusal' by markers ({match}) vs hand labels",
            value=round(overall["f1"], 3),
            target=f"the configured rule ({configured}) has the best F1",
            met=results[configured]["overall"]["f1"] >= results[best]["overall"]["f1"],
            details={"markers": f"{markers['name']}_v{markers['version']}", "configured": match == configured,
                     "n_labelled": len(rows), "n_refusal": sum(truth), **overall, "by_model": result["by_model"],
                     "wrong": result["wrong"]},
        ))  # fmt: skip
    return common.write_rows(args.out, out)


if __name__ == "__main__":
    raise SystemExit(main())
