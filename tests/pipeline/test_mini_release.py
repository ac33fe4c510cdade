"""`safer-instruct run experiment=mini_release` in a small mode: the tiny model, 16 release pairs, 3
prompts per set. Checks the chain and the hand-overs (release pairs -> DPO -> both models answer
harmful and benign prompts -> refusal judge -> report), not model quality: the tiny model writes noise.
Skips, saying why, where the published release is not found (it is read in place, never copied).
"""

from __future__ import annotations

import csv
import json

import pytest

from safer_instruct.paths import release_location
from tests.pipeline.helpers import run_cli

pytestmark = pytest.mark.slow

SMALL = ("mini.model=tiny", "mini.pairs=16", "mini.batch=4", "mini.harmbench_prompts=3", "mini.advbench_prompts=3",
         "mini.benign_prompts=3", "mini.max_tokens=8", "mini.temperature=1.0")  # fmt: skip
EVALS = {"base_model": ("refusal_base_harmbench", "refusal_base_advbench", "answer_base_benign"),
         "dpo_model": ("refusal_dpo_harmbench", "refusal_dpo_advbench", "answer_dpo_benign")}  # fmt: skip


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    from pathlib import Path

    release = Path(release_location())
    if not (release / "safer_instruct_hate.csv").is_file():
        pytest.skip(f"the Safer-Instruct release is not at {release} (set SAFER_INSTRUCT_RELEASE)")
    exp = tmp_path_factory.mktemp("mini") / "exp"
    out = run_cli("run", "experiment=mini_release", *SMALL, f"out_dir={exp}", f"cache.dir={exp.parent / 'cache'}",
                  timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return exp, out


def test_dpo_trained_on_release_pairs_drawn_from_both_categories_with_a_rejected(mini):
    exp, _ = mini
    stats = json.loads((exp / "dpo" / "data_stats.json").read_text())
    assert stats["load"]["source"] == "safer_instruct_release"
    assert stats["rows_used"] == 16
    assert set(stats["categories"]) == {"hate", "self-harm"}
    # A stratified random draw: both categories, in proportion to their pairs (hate has more).
    used = {name: c["used"] for name, c in stats["categories"].items()}
    assert used["hate"] > used["self-harm"] > 0 and sum(used.values()) == 16
    assert stats["sample"]["size"] == 16 and stats["sample"]["stratified_by"] == "category"
    # The held-out prompt sets the leakage guard checked training against.
    assert {"harmbench", "advbench"} <= set(stats["leakage"]["sets"])
    assert (exp / "dpo" / "metrics.jsonl").read_text().strip()
    # The experiment's training length (128 tokens per pair, not the model preset's 256) reached the step.
    import yaml

    dpo_config = yaml.safe_load((exp / "dpo" / "config.yaml").read_text())
    assert (dpo_config["model"]["max_length"], dpo_config["model"]["max_prompt_length"]) == (128, 64)
    assert dpo_config["train"]["learning_rate"] == 1e-4


def test_both_models_answered_every_set_and_the_refusal_judge_scored_them(mini):
    exp, _ = mini
    for group, steps in EVALS.items():
        for step in steps:
            result = json.loads((exp / group / step / "harmlessness.json").read_text())
            assert result["metric"] == "refusal_rate", step
            assert result["judge"]["kind"] == "refusal" and result["n"] == 3
            assert result["n_refused"] + result["n_answered"] + result["n_unjudged"] == 3
            rows = [json.loads(line) for line in (exp / group / step / "judgements.jsonl").read_text().splitlines()]
            assert len(rows) == 3 and all("refused" in row for row in rows)
    dpo_cfg = (exp / "dpo_model" / "refusal_dpo_harmbench" / "config.yaml").read_text()
    assert f"{exp}/dpo/model" in dpo_cfg


def test_report_has_both_models_both_rates_and_example_answers(mini):
    exp, out = mini
    with open(exp / "report" / "report.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    models = {r["model"] for r in records}
    assert models == {"SmolLM2-135M-Instruct", "SmolLM2-135M + DPO (16 release pairs)"}
    md = (exp / "report" / "report.md").read_text()
    assert "refusal rate" in md.lower() and "answer rate" in md.lower()
    assert "harmbench" in md and "advbench" in md and "benign_v1" in md
    assert "Example answers" in md
    assert "proxy" in md
