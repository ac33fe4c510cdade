"""`report`: two finished runs in, one table (Markdown + CSV), valid PNG charts and DPO curves out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from safer_instruct.cli import main as cli
from safer_instruct.evaluation.report import build_report
from tests.helpers.servers import FaultServer

SOURCES = ("hh", "beaver", "si")


def refusal_judge(path: str, body: dict) -> str:
    """Scripted judge (loopback server): an answer that refuses is harmless, any other is harmful."""
    user = body["messages"][-1]["content"]
    response = user.split("[RESPONSE]\n", 1)[1]
    verdict = "harmless" if "cannot" in response.split("\n\nIs the response")[0] else "harmful"
    return json.dumps({"verdict": verdict, "rationale": "scripted"})


def write_answers(path: Path, refusals_per_source: dict[str, int], n_per_source: int = 6) -> None:
    rows = []
    for source in SOURCES:
        for i in range(n_per_source):
            answer = (
                "I cannot help with that." if i < refusals_per_source[source] else f"Sure, step {i} is..."
            )
            rows.append({"prompt": f"harmful request {source} {i}", "response": answer, "source": source})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def check_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 250
        colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colors is not None and len(colors) > 20  # something was drawn, not a blank canvas


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, tiny_model):
    """Two finished runs: base (harmlessness + downstream) and dpo (harmlessness + DPO training metrics)."""
    root = tmp_path_factory.mktemp("runs")
    cache = root / "cache"
    with FaultServer(responder=refusal_judge) as judge:
        judge_args = ["judge=endpoint", f"judge.base_url={judge.base_url}", "judge.model=scripted-judge"]
        for name, refusals in (
            ("base", {"hh": 2, "beaver": 3, "si": 1}),
            ("dpo", {"hh": 5, "beaver": 6, "si": 4}),
        ):
            answers = root / f"{name}_answers.jsonl"
            write_answers(answers, refusals)
            assert cli(["eval", "harmlessness", f"responses.path={answers}", f"label={name}", "bootstrap.n=300",
                        f"training_data={'none' if name == 'base' else 'safer_instruct'}", *judge_args,
                        f"cache.dir={cache}", f"out_dir={root / name / 'eval_harmlessness'}"]) == 0  # fmt: skip
    assert cli(["eval", "downstream", "model=tiny", "label=base", "tasks=[si_local_mc]", "harness.limit=4",
                "harness.include_path=conf/lm_eval_tasks", "harness.include_defaults=false",
                f"out_dir={root / 'base' / 'eval_downstream'}"]) == 0  # fmt: skip
    # DPO training metrics in the format the training stage logs (one JSON object per logged step).
    metrics = root / "dpo" / "train_dpo" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    rows = [{"step": s, "epoch": s / 10, "loss": 0.69 - 0.03 * s, "rewards/margins": 0.05 * s,
             "rewards/accuracies": min(1.0, 0.5 + 0.05 * s), "learning_rate": 5e-7} for s in range(1, 11)]  # fmt: skip
    rows.append({"step": 10, "train_runtime": 3.2, "train_loss": 0.5})  # the trainer's final summary line
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def test_report_from_two_finished_runs(tmp_path, finished_runs):
    out = tmp_path / "report"
    assert cli(["report", f"runs=[{finished_runs / 'base'},{finished_runs / 'dpo'}]", f"out_dir={out}"]) == 0
    with open(out / "report.csv", newline="") as handle:
        records = {r["model"]: r for r in csv.DictReader(handle)}
    assert set(records) == {"base", "dpo"}  # one row per model: base merges harmlessness + downstream
    for name in ("base", "dpo"):
        result = json.loads((finished_runs / name / "eval_harmlessness" / "harmlessness.json").read_text())
        record = records[name]
        assert float(record["harmless_rate"]) == pytest.approx(result["rate"])
        assert float(record["harmless_ci_low"]) <= result["rate"] <= float(record["harmless_ci_high"])
        for source in SOURCES:
            assert float(record[f"harmless_{source}_rate"]) == pytest.approx(
                result["by_source"][source]["rate"]
            )
        assert record["judge"] == "scripted-judge (harmlessness_v1)"
    assert float(records["base"]["harmless_rate"]) == pytest.approx(6 / 18)
    assert float(records["dpo"]["harmless_rate"]) == pytest.approx(15 / 18)
    assert records["dpo"]["training_data"] == "safer_instruct"
    downstream = json.loads((finished_runs / "base" / "eval_downstream" / "downstream.json").read_text())
    assert float(records["base"]["si_local_mc_acc"]) == downstream["scores"]["si_local_mc"]["value"]
    assert records["dpo"]["si_local_mc_acc"] == ""

    markdown = (out / "report.md").read_text()
    assert "| base |" in markdown and "| dpo |" in markdown and "si_local_mc (acc)" in markdown
    assert "not shown" in markdown and "judge 'scripted-judge' is not one of the paper's" in markdown
    summary = json.loads((out / "report.json").read_text())
    assert summary["charts"] == ["harmlessness.png", "downstream.png", "dpo_curves.png"]
    assert summary["dpo_runs"] == ["dpo/train_dpo"] and summary["paper_reference"]["shown"] is False
    for name in summary["charts"]:
        check_png(out / name)


def _paper_like_result(path: Path, judge: str, per_source: int) -> None:
    path.mkdir(parents=True)
    by_source = {s: {"rate": 0.9, "ci95": [0.85, 0.94], "n": per_source, "n_unjudged": 0} for s in SOURCES}
    result = {"label": "alpaca+si", "rate": 0.9, "ci95": [0.88, 0.92], "n": 3 * per_source, "n_unjudged": 0,
              "by_source": by_source, "judge": {"model": judge, "template": {"id": "harmlessness_v1"}},
              "items": {"mode": "generated", "name": "release_test_set"}}  # fmt: skip
    (path / "harmlessness.json").write_text(json.dumps(result))


def test_paper_figures_only_where_judge_and_prompts_match(tmp_path):
    reference = {"judge_models": ["gpt-4-0613", "claude-3-opus-20240229"], "n": 900,
                 "sources": {"hh": 300, "beaver": 300, "si": 300},
                 "figures": [{"label": "Alpaca + Safer-Instruct (paper)", "rate": 0.947},
                             {"label": "Alpaca + human-annotated safety data (paper)", "rate": 0.863}]}  # fmt: skip
    _paper_like_result(tmp_path / "match", "claude-3-opus-20240229", 300)
    summary = build_report([tmp_path / "match"], tmp_path / "out1", reference=reference)
    assert summary["paper_reference"]["shown"] is True
    markdown = (tmp_path / "out1" / "report.md").read_text()
    assert "94.7%" in markdown and "86.3%" in markdown and "for reference only" in markdown
    check_png(tmp_path / "out1" / "harmlessness.png")

    _paper_like_result(tmp_path / "subset", "gpt-4-0613", 10)
    summary = build_report([tmp_path / "subset"], tmp_path / "out2", reference=reference, charts=False)
    assert summary["paper_reference"]["shown"] is False and summary["charts"] == []
    (reason,) = summary["paper_reference"]["reasons"].values()
    assert reason.startswith("prompts are not the paper's test set (30 prompts")  # the judge matched
    assert "are not shown" in (tmp_path / "out2" / "report.md").read_text()


def test_report_rejects_missing_or_empty_run_folders(tmp_path):
    assert cli(["report", f"runs=[{tmp_path / 'nope'}]", f"out_dir={tmp_path / 'out'}"]) == 1
    (tmp_path / "empty").mkdir()
    assert cli(["report", f"runs=[{tmp_path / 'empty'}]", f"out_dir={tmp_path / 'out2'}"]) == 1
    assert cli(["report", f"out_dir={tmp_path / 'out3'}"]) == 2  # runs is mandatory
