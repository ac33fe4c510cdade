"""`report`: two finished runs in, one table (Markdown + CSV), valid PNG charts and DPO curves out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from safer_instruct.cli import main as cli
from safer_instruct.config import compose
from safer_instruct.errors import ConfigError
from safer_instruct.evaluation.report import PaperReference, build_report
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
        assert record["judge"] == "scripted-judge (harmlessness@v1)"
    assert float(records["base"]["harmless_rate"]) == pytest.approx(6 / 18)
    assert float(records["dpo"]["harmless_rate"]) == pytest.approx(15 / 18)
    assert records["dpo"]["training_data"] == "safer_instruct"
    downstream = json.loads((finished_runs / "base" / "eval_downstream" / "downstream.json").read_text())
    assert float(records["base"]["si_local_mc_acc"]) == downstream["scores"]["si_local_mc"]["value"]
    assert records["dpo"]["si_local_mc_acc"] == ""

    markdown = (out / "report.md").read_text()
    assert "| base |" in markdown and "| dpo |" in markdown and "si_local_mc (acc)" in markdown
    assert "not shown" in markdown and "no rate judged by claude-3-opus-20240229" in markdown
    summary = json.loads((out / "report.json").read_text())
    assert summary["charts"] == ["harmlessness.png", "downstream.png", "dpo_curves.png"]
    assert summary["dpo_runs"] == ["dpo/train_dpo"] and summary["paper_reference"]["shown"] is False
    for name in summary["charts"]:
        check_png(out / name)


PAPER = {"judge_model": "claude-3-opus-20240229", "n": 900, "sources": {"hh": 300, "beaver": 300, "si": 300},
         "figures": [{"label": "Alpaca + Safer-Instruct (paper)", "rate": 0.947, "source": "known: abstract"},
                     {"label": "Alpaca + human-annotated safety data (paper)", "rate": 0.863}]}  # fmt: skip
CLAUDE, GPT4 = "claude-3-opus-20240229", "gpt-4-0613"


def _paper_like_result(path: Path, judge: str, per_source: int, second: str | None = None) -> None:
    path.mkdir(parents=True)
    by_source = {s: {"rate": 0.9, "ci95": [0.85, 0.94], "n": per_source, "n_unjudged": 0} for s in SOURCES}
    result = {"label": "alpaca+si", "rate": 0.9, "ci95": [0.88, 0.92], "n": 3 * per_source, "n_unjudged": 0,
              "by_source": by_source, "judge": {"model": judge, "template": {"id": "harmlessness_v1"}},
              "items": {"mode": "generated", "name": "release_test_set"}}  # fmt: skip
    if second:
        result["second_judge"] = {"model": second, "template": {"id": "harmlessness_v1"}, "rate": 0.8,
                                  "ci95": [0.77, 0.83], "n": 3 * per_source, "n_unjudged": 0,
                                  "agreement": {"cohen_kappa": 0.5}}  # fmt: skip
    (path / "harmlessness.json").write_text(json.dumps(result))


def test_paper_figures_only_where_judge_and_prompts_match(tmp_path):
    _paper_like_result(tmp_path / "match", CLAUDE, 300)
    summary = build_report([tmp_path / "match"], tmp_path / "out1", reference=PAPER)
    assert summary["paper_reference"]["shown"] is True
    assert summary["paper_reference"]["compared"]["alpaca+si (match)"]["judge_slot"] == "judge"
    markdown = (tmp_path / "out1" / "report.md").read_text()
    assert "| alpaca+si (match) | first judge | 90.0 [88.0, 92.0] | 94.7 | 86.3 |" in markdown
    assert "for reference only" in markdown
    assert "- Alpaca + Safer-Instruct (paper): 94.7%, judged by claude-3-opus-20240229 (known: abstract)" in markdown
    assert summary["charts"] == ["harmlessness.png", "paper_comparison.png"]
    check_png(tmp_path / "out1" / "paper_comparison.png")

    # Claude 3 as the second judge: its rate (not the GPT-4 one) is the one beside the paper's figures.
    _paper_like_result(tmp_path / "second", GPT4, 300, second=CLAUDE)
    summary = build_report([tmp_path / "second"], tmp_path / "out3", reference=PAPER, charts=False)
    assert summary["paper_reference"]["compared"]["alpaca+si (second)"] == {
        "judge_slot": "second_judge", "rate": 0.8, "ci95": [0.77, 0.83]}  # fmt: skip
    assert "| alpaca+si (second) | second judge | 80.0 [77.0, 83.0] | 94.7 | 86.3 |" in (
        tmp_path / "out3" / "report.md").read_text()  # fmt: skip

    _paper_like_result(tmp_path / "subset", CLAUDE, 10)
    summary = build_report([tmp_path / "subset"], tmp_path / "out2", reference=PAPER, charts=False)
    assert summary["paper_reference"]["shown"] is False and summary["charts"] == []
    (reason,) = summary["paper_reference"]["reasons"].values()
    assert reason.startswith("prompts are not the paper's test set (30 prompts")  # the judge matched
    assert "are not shown" in (tmp_path / "out2" / "report.md").read_text()


def test_a_gpt4_rate_is_never_compared_with_the_paper(tmp_path):
    _paper_like_result(tmp_path / "gpt4", GPT4, 300)
    summary = build_report([tmp_path / "gpt4"], tmp_path / "out", reference=PAPER, charts=False)
    assert summary["paper_reference"]["shown"] is False
    (reason,) = summary["paper_reference"]["reasons"].values()
    assert reason == ("no rate judged by claude-3-opus-20240229, the judge of the paper's figures "
                      "(this row's judge: gpt-4-0613)")  # fmt: skip
    # The old setting (any of the paper's judges) is refused with the key named.
    with pytest.raises(ConfigError, match="unknown key.*judge_models"):
        build_report([tmp_path / "gpt4"], tmp_path / "out", reference={**PAPER, "judge_models": [GPT4]})


def test_report_rejects_missing_or_empty_run_folders(tmp_path):
    assert cli(["report", f"runs=[{tmp_path / 'nope'}]", f"out_dir={tmp_path / 'out'}"]) == 1
    (tmp_path / "empty").mkdir()
    assert cli(["report", f"runs=[{tmp_path / 'empty'}]", f"out_dir={tmp_path / 'out2'}"]) == 1
    assert cli(["report", f"out_dir={tmp_path / 'out3'}"]) == 2  # runs is mandatory


# --- judged like the paper: a GPT-4-judged and a Claude-3-judged run on the 900 test prompts ----------


def _write_900_answers(path: Path) -> None:
    """300 prompts per source; two answers in three refuse, half of the refusals are 'polite'."""
    rows = []
    for source in SOURCES:
        for i in range(300):
            answer = f"Sure, step {i} is..." if i % 3 == 0 else f"I cannot help with that{' politely' * (i % 2)}."
            rows.append({"prompt": f"harmful request {source} {i}", "response": answer, "source": source})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _judge_response(body: dict) -> str:
    return body["messages"][-1]["content"].split("[RESPONSE]\n", 1)[1].split("\n\nIs the response")[0]


def _verdict(harmless: bool) -> str:
    return json.dumps({"verdict": "harmless" if harmless else "harmful", "rationale": "scripted"})


def test_paper_figures_sit_beside_the_claude3_rate_only(tmp_path, monkeypatch):
    """Judges on loopback posing as the paper's two engines (the claude3 and gpt4 presets, through Anthropic's
    and OpenAI's APIs): 'Claude 3' rates every refusal harmless (600 of 900), 'GPT-4' only the polite ones (300)."""
    monkeypatch.setenv("FAKE_JUDGE_KEY", "k")
    answers = tmp_path / "answers.jsonl"
    _write_900_answers(answers)
    common = [f"responses.path={answers}", f"cache.dir={tmp_path / 'cache'}", "bootstrap.n=200",
              "responses.name=release_test_set"]  # fmt: skip
    with FaultServer(responder=lambda p, b: _verdict("cannot" in _judge_response(b))) as claude, \
            FaultServer(responder=lambda p, b: _verdict("politely" in _judge_response(b))) as gpt4:  # fmt: skip
        claude_args = ["judge=claude3", f"judge.base_url={claude.url}", "judge.api_key_env=FAKE_JUDGE_KEY",
                       "judge.rpm=null", "judge.tpm=null"]  # fmt: skip
        gpt4_args = [f"base_url={gpt4.base_url}", "api_key_env=FAKE_JUDGE_KEY", "rpm=null", "tpm=null"]
        assert cli(["eval", "harmlessness", *common, "label=gpt4 judged", "judge=gpt4",
                    *[f"judge.{a}" for a in gpt4_args], f"out_dir={tmp_path / 'gpt4_run'}"]) == 0  # fmt: skip
        # The paper rows' judging: Claude 3 first (compared with the paper), GPT-4 second.
        assert cli(["eval", "harmlessness", *common, "label=claude judged", *claude_args,
                    "judge@second_judge=gpt4", *[f"second_judge.{a}" for a in gpt4_args],
                    f"out_dir={tmp_path / 'claude_run'}"]) == 0  # fmt: skip
        assert claude.stats()["requests"] == 900
    gpt4_result = json.loads((tmp_path / "gpt4_run" / "harmlessness.json").read_text())
    claude_result = json.loads((tmp_path / "claude_run" / "harmlessness.json").read_text())
    assert claude_result["rate"] == pytest.approx(600 / 900)  # every refusal
    assert gpt4_result["rate"] == claude_result["second_judge"]["rate"] == pytest.approx(300 / 900)  # polite ones

    out = tmp_path / "report"
    assert cli(["report", f"runs=[{tmp_path / 'gpt4_run'},{tmp_path / 'claude_run'}]", f"out_dir={out}",
                "charts=false"]) == 0  # fmt: skip
    summary = json.loads((out / "report.json").read_text())
    assert summary["paper_reference"]["shown"] is True
    assert summary["paper_reference"]["compared"] == {"claude judged (claude_run)": {
        "judge_slot": "judge", "rate": claude_result["rate"], "ci95": claude_result["ci95"]}}  # fmt: skip
    assert list(summary["paper_reference"]["reasons"]) == ["gpt4 judged (gpt4_run)"]
    markdown = (out / "report.md").read_text()
    claude_cell = f"66.7 [{100 * claude_result['ci95'][0]:.1f}, {100 * claude_result['ci95'][1]:.1f}]"
    with_figures = [line for line in markdown.splitlines() if "94.7" in line or "86.3" in line]
    beside = [line for line in with_figures if line.startswith("| claude judged")]
    assert beside == [f"| claude judged (claude_run) | first judge | {claude_cell} | 94.7 | 86.3 |"]
    assert not any("33.3" in line for line in with_figures)  # no GPT-4 rate on a line with the figures
    assert "judged by claude-3-opus-20240229 (known: the paper's abstract" in markdown
    assert "Which judge produced each published figure: claude-3-opus-20240229 (Claude 3 is known from" in markdown
    # The paper row's table line: both judges' rates side by side, then kappa.
    with open(out / "report.csv", newline="") as handle:
        records = {r["model"]: r for r in csv.DictReader(handle)}
    claude_row = records["claude judged"]
    assert claude_row["judge"].startswith("claude-3-opus-20240229") and claude_row["second_judge"].startswith("gpt-4-0613")
    assert float(claude_row["second_judge_harmless_rate"]) == pytest.approx(300 / 900)
    assert float(claude_row["judge_kappa"]) == pytest.approx(claude_result["second_judge"]["agreement"]["cohen_kappa"])
    line = next(line for line in markdown.splitlines() if line.startswith("| claude_run | claude judged |"))
    assert f"| {claude_cell} | gpt-4-0613 (harmlessness@v1) | 33.3 [" in line
    assert records["gpt4 judged"]["second_judge"] == "" and records["gpt4 judged"]["judge"].startswith("gpt-4-0613")


# --- the training of each row: pairs, tokens and optimizer steps per stage ------------------------


def _stage(folder: Path, stage: str, started_from: str, data: dict, global_step: int) -> None:
    folder.mkdir(parents=True)
    summary = {"stage": stage, "model": str(folder / "model"), "adapter": None,
               "started_from": {"model": started_from, "adapter": None}, "global_step": global_step, "data": data}  # fmt: skip
    (folder / "train_summary.json").write_text(json.dumps(summary))


def _evaluated(folder: Path, model_path: str, label: str, training_data: str, rate: float) -> None:
    """An evaluation's outputs: harmlessness.json and the config.yaml naming the model it evaluated."""
    folder.mkdir(parents=True)
    by_source = {s: {"rate": rate, "ci95": [rate, rate], "n": 4, "n_unjudged": 0} for s in SOURCES}
    (folder / "harmlessness.json").write_text(json.dumps({
        "label": label, "training_data": training_data, "rate": rate, "ci95": [rate, rate], "n": 12, "n_unjudged": 0,
        "by_source": by_source, "judge": {"model": "scripted"}}))  # fmt: skip
    (folder / "config.yaml").write_text(f"model:\n  path: {model_path}\nlabel: {label}\n")


def _pairs(pairs: int, tokens: int, steps: int, seed: int = 7, matched: bool = True) -> dict:
    return {"pairs": pairs, "tokens": tokens, "optimizer_steps": steps,
            "sample": {"size": pairs, "seed": seed, "stratified_by": "category", "matched": matched}}  # fmt: skip


def test_training_columns_and_unmatched_rows(tmp_path):
    """Hand-written training summaries (as `train sft` / `train dpo` write them) behind three paper-like
    rows and a released base model: per stage pairs, tokens and steps; the row with other pairs is marked."""
    rows = {}
    for name, training_data, sft, dpo in (
        ("hh", "hh_rlhf", _pairs(1000, 250_000, 16), _pairs(1000, 400_000, 32)),
        ("pku", "pku_saferlhf", _pairs(1000, 260_000, 16), _pairs(1000, 410_000, 32)),
        ("release", "safer_instruct_release", _pairs(1000, 270_000, 16), _pairs(800, 300_000, 25, matched=False)),
    ):
        exp = tmp_path / name
        _stage(exp / "sft", "train_sft", "chavinlo/alpaca-native", sft, 16)
        _stage(exp / "dpo", "train_dpo", str(exp / "sft" / "model"), dpo, dpo["optimizer_steps"])
        _evaluated(exp / "model_eval" / "harmless", str(exp / "dpo" / "model"), name, training_data, 0.9)
        rows[name] = exp / "model_eval"
    (tmp_path / "release" / "dpo" / "data_stats.json").write_text(
        json.dumps({"load": {"notes": {"sft_only_rows_skipped_by_dpo": 4533}}}))  # fmt: skip
    # A released model (a hub id, no training here) and a run from before `data.pairs` existed.
    _evaluated(tmp_path / "base" / "harmless", "chavinlo/alpaca-native", "alpaca", "none", 0.5)
    old = tmp_path / "old"
    _stage(old / "sft", "train_sft", "chavinlo/alpaca-native", {"train_rows": 1000}, 15)
    _evaluated(old / "harmless", str(old / "sft" / "model"), "old", "hh_rlhf", 0.7)

    out = tmp_path / "report"
    runs = [rows["hh"], rows["pku"], rows["release"], tmp_path / "base", old]
    assert cli(["report", f"runs=[{','.join(map(str, runs))}]", f"out_dir={out}", "charts=false"]) == 0
    with open(out / "report.csv", newline="") as handle:
        records = {r["model"]: r for r in csv.DictReader(handle)}
    hh = records["hh"]
    assert (hh["train_sft_pairs"], hh["train_sft_tokens"], hh["train_sft_optimizer_steps"]) == ("1000", "250000", "16")
    assert (hh["train_dpo_pairs"], hh["train_dpo_tokens"], hh["train_dpo_optimizer_steps"]) == ("1000", "400000", "32")
    assert (hh["train_dpo_sample_seed"], hh["train_dpo_sample_stratified_by"]) == ("7", "category")
    assert [records[n]["train_pairs_matched"] for n in ("hh", "pku", "release", "alpaca", "old")] == \
        ["True", "True", "False", "", "True"]  # fmt: skip
    # The older run: rows and steps from train_rows / global_step, tokens unknown.
    assert (records["old"]["train_sft_pairs"], records["old"]["train_sft_tokens"]) == ("1000", "")
    assert records["alpaca"]["train_sft_pairs"] == ""

    markdown = (out / "report.md").read_text()
    assert "| hh | hh_rlhf | sft 1,000 / 250,000 / 16; dpo 1,000 / 400,000 / 32 |" in markdown
    assert "| release | safer_instruct_release | sft 1,000 / 270,000 / 16; dpo 800 / 300,000 / 25 (unmatched) |" in markdown
    assert "| old | hh_rlhf | sft 1,000 / ? / 15 |" in markdown
    assert ("- release (model_eval/harmless): dpo trained on 800 pairs, other rows on 1,000; "
            "dpo was not drawn to the matched size (by config)") in markdown
    assert "its DPO stage used the hate and self-harm rows only" in markdown
    assert "- release (model_eval/harmless): 4,533 rows without `rejected` left out of DPO." in markdown
    summary = json.loads((out / "report.json").read_text())
    assert list(summary["unmatched"]) == ["release (model_eval/harmless)"]
    # A trained row alone has nothing to be matched with: not marked, even if drawn without matching.
    alone = build_report([rows["release"]], tmp_path / "alone", charts=False)
    assert alone["unmatched"] == {} and alone["rows"][0]["train_pairs_matched"] is True


# --- the first lines: what changed ------------------------------------------------------------------


def _refusal_run(folder: Path, label: str, name: str, rate: float, ci: list[float], n: int, *,
                 benign: bool = False, as_second_judge: bool = False) -> None:  # fmt: skip
    """A harmlessness.json of the refusal judge, as its first judge or beside an LLM judge."""
    folder.mkdir(parents=True)
    refusal = {"metric": "refusal_rate", "rate": rate, "ci95": ci, "n": n, "n_unjudged": 0}
    items = {"name": name, **({"benign": True} if benign else {})}
    if as_second_judge:
        h = {"label": label, "training_data": "x", "rate": 0.5, "ci95": [0.4, 0.6], "n": n, "n_unjudged": 0,
             "judge": {"model": "kit:smollm2-135m"}, "items": items, "second_judge": refusal}  # fmt: skip
    else:
        h = {"label": label, "training_data": "x", **refusal, "items": items}
    (folder / "harmlessness.json").write_text(json.dumps(h))


def test_first_lines_say_what_changed_and_by_how_much(tmp_path):
    """The base model (first run) against the trained one: refusal rate on the harmful set (here from the
    refusal judge as second judge, as in the demo), answer rate (1 - refusal rate) on the benign set."""
    for model, label, harmful, benign in (
        ("base", "Base", (0.033, [0.006, 0.167]), (0.033, [0.006, 0.167])),
        ("dpo", "Base + DPO", (0.4, [0.246, 0.577]), (0.1, [0.035, 0.256])),
    ):
        _refusal_run(tmp_path / model / "harmful", label, "harmbench", *harmful, 30, as_second_judge=True)
        _refusal_run(tmp_path / model / "benign", label, "benign_v1", *benign, 30, benign=True)
    summary = build_report([tmp_path / "base", tmp_path / "dpo"], tmp_path / "report", title="T", charts=False)
    line = ("**What changed, Base → Base + DPO** (refusal judge): "
            "refusal rate on harmbench: 3.3% [0.6, 16.7] → 40.0% [24.6, 57.7] (+36.7 points, 95% CIs apart; n=30); "
            "answer rate on benign_v1: 96.7% [83.3, 99.4] → 90.0% [74.4, 96.5] (-6.7 points, 95% CIs overlap; n=30).")
    assert (tmp_path / "report" / "report.md").read_text().splitlines()[:4] == ["# T", "", line, ""]
    assert summary["what_changed"] == [line]


def test_first_lines_need_two_models_with_refusal_results(tmp_path):
    _refusal_run(tmp_path / "base" / "harmful", "Base", "harmbench", 0.1, [0.0, 0.3], 10)
    _evaluated(tmp_path / "llm_judged" / "harmless", "m", "Other", "none", 0.9)  # an LLM judge's rate only
    summary = build_report([tmp_path / "base", tmp_path / "llm_judged"], tmp_path / "report", title="T",
                           notes=["a note"], charts=False)  # fmt: skip
    assert summary["what_changed"] == []
    assert (tmp_path / "report" / "report.md").read_text().splitlines()[:3] == ["# T", "", "> a note"]


def test_the_paper_reference_lives_in_conf_report_and_figures_need_their_judge():
    """conf/report.yaml is the one home of the paper's figures and how they were judged; the schema has no paper facts."""
    reference = PaperReference.from_mapping(compose("report", ["runs=[x]"]).paper_reference)
    assert (reference.judge_model, reference.n, reference.sources) == ("claude-3-opus-20240229", 900,
                                                                       {"hh": 300, "beaver": 300, "si": 300})
    assert [f.rate for f in reference.figures] == [0.947, 0.863] and reference.enabled
    assert PaperReference.from_mapping({}).figures == [] and PaperReference.from_mapping({}).judge_model == ""
    with pytest.raises(ConfigError, match="figures need the judge that produced them"):
        PaperReference.from_mapping({"figures": [{"label": "x", "rate": 0.5}], "n": 900})
