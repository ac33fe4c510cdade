"""bench_mini_release over a finished sweep: one trade-off row per point, headline rows from the best point."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_mini_release

        yield bench_mini_release
    finally:
        sys.path.remove(str(BENCH))


def result(folder: Path, name: str, refused: int, n: int, benign: bool = False) -> None:
    folder.mkdir(parents=True)
    rate = refused / n
    folder.joinpath("harmlessness.json").write_text(json.dumps({
        "metric": "refusal_rate", "rate": rate, "ci95": [max(0.0, rate - 0.05), min(1.0, rate + 0.05)], "n": n,
        "n_unjudged": 0, "items": {"name": name, **({"benign": True} if benign else {})}}))  # fmt: skip


def point(sweep: Path, index: int, pairs: int, beta: float, dpo_refused: int, dpo_benign_refused: int) -> None:
    exp = sweep / "sweep" / str(index)
    result(exp / "base_model" / "refusal_base_harmbench", "harmbench", 2, 100)
    result(exp / "base_model" / "answer_base_benign", "benign_v1", 1, 50, benign=True)
    result(exp / "dpo_model" / "refusal_dpo_harmbench", "harmbench", dpo_refused, 100)
    result(exp / "dpo_model" / "answer_dpo_benign", "benign_v1", dpo_benign_refused, 50, benign=True)
    (exp / "dpo").mkdir(parents=True)
    (exp / "dpo" / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"name": "smollm2-135m"}, "data": {"sample_size": pairs}, "train": {"beta": beta, "learning_rate": 1e-4}}))
    (exp / "dpo" / "train_summary.json").write_text(json.dumps({"data": {"pairs": pairs, "optimizer_steps": pairs // 8}}))
    (exp / "sweep_point.json").write_text(json.dumps(
        {"overrides": ["experiment=mini_release", f"mini.pairs={pairs}", f"train.beta={beta}"]}))


def test_each_point_has_a_tradeoff_row_and_the_headline_is_the_best_point(bench, tmp_path):
    point(tmp_path, 0, 100, 0.1, dpo_refused=20, dpo_benign_refused=2)   # +18, drop 2: misses (gain)
    point(tmp_path, 1, 300, 0.1, dpo_refused=60, dpo_benign_refused=10)  # +58, drop 18: misses (drop)
    point(tmp_path, 2, 300, 0.5, dpo_refused=40, dpo_benign_refused=5)   # +38, drop 8: meets
    rows = {r["benchmark"]: r for r in bench.tradeoff_rows(tmp_path)}
    tradeoff = {k: v for k, v in rows.items() if k.startswith("mini_release_tradeoff[")}
    assert sorted(tradeoff) == ["mini_release_tradeoff[mini.pairs=100,train.beta=0.1]",
                                "mini_release_tradeoff[mini.pairs=300,train.beta=0.1]",
                                "mini_release_tradeoff[mini.pairs=300,train.beta=0.5]"]  # fmt: skip
    assert [(r["value"], r["details"]["benign_answer_drop"], r["met"]) for r in tradeoff.values()] == [
        (18.0, 2.0, False), (58.0, 18.0, False), (38.0, 8.0, True)]
    gain, drop = rows["mini_release_harmbench_refusal_gain"], rows["mini_release_benign_answer_drop"]
    assert (gain["value"], drop["value"]) == (38.0, 8.0)
    assert gain["details"]["sweep_point"] == "mini.pairs=300,train.beta=0.5"
    assert gain["details"]["chosen_as"] == "meets the target, largest gain"


def test_without_a_point_meeting_the_target_the_best_gain_minus_drop_leads(bench, tmp_path):
    point(tmp_path, 0, 100, 0.1, dpo_refused=20, dpo_benign_refused=2)   # 18 - 2 = 16
    point(tmp_path, 1, 300, 0.1, dpo_refused=60, dpo_benign_refused=15)  # 58 - 28 = 30
    rows = bench.tradeoff_rows(tmp_path)
    assert rows[0]["details"]["sweep_point"] == "mini.pairs=300"  # beta is the same at every point
    assert rows[0]["details"]["chosen_as"].startswith("no point meets the target")


def test_the_chart_draws_both_rates_against_pairs(bench, tmp_path):
    point(tmp_path, 0, 100, 0.1, dpo_refused=20, dpo_benign_refused=2)
    point(tmp_path, 1, 300, 0.1, dpo_refused=60, dpo_benign_refused=10)
    chart = tmp_path / "chart.png"
    assert bench.tradeoff_chart(tmp_path, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
