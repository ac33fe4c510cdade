"""No test prompt in any row's training data: HH-RLHF and PKU-SafeRLHF files holding some of the release's
`hh` / `beaver` test prompts (read from the real test_set.csv, skipped when it is absent) train with
exactly those rows removed as `test_prompt_overlap`; a paper run without its prompt set stops before
any model loads. Also `data=hh_rlhf data.path=FILE.jsonl` (the preset's data_dir is not appended)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from safer_instruct.errors import ConfigError
from safer_instruct.paths import release_location
from safer_instruct.training.run import run_dpo, run_sft
from tests.training.helpers import stage_config, write_jsonl

TEST_SET = Path(release_location()) / "test_set.csv"
needs_release = pytest.mark.skipif(not TEST_SET.is_file(), reason=f"the Safer-Instruct release is not at {TEST_SET.parent}")
QUICK = ["model=tiny", "train.max_steps=1", "train.learning_rate=1e-3", "train.global_batch_size=4",
         "train.per_device_train_batch_size=2", "train.save_strategy=no"]  # fmt: skip
# Only the release's test set, required, as in the paper presets (advbench/harmbench left out of the check).
GUARD = ["~prompt_set@leakage.sets.advbench", "~prompt_set@leakage.sets.harmbench",
         "leakage.required=[release_test_set]", f"leakage.sets.release_test_set.path={TEST_SET}"]  # fmt: skip
H, A = "\n\nHuman: ", "\n\nAssistant: "


def _test_prompts(label: str) -> list[str]:
    with TEST_SET.open(encoding="utf-8", newline="") as handle:
        return [row["instruction"] for row in csv.DictReader(handle) if row["label"] == label and "\n" not in row["instruction"]]


def _hh(prompt: str, *, earlier: str | None = None) -> dict:
    dialogue = (H + earlier + A + "Why do you ask?" if earlier else "") + H + prompt
    return {"chosen": dialogue + A + "I can't help with that.", "rejected": dialogue + A + "Sure, here is how."}


def _read(out: Path) -> tuple[dict, dict, dict]:
    return tuple(json.loads((out / name).read_text()) for name in ("data_stats.json", "train_summary.json", "train_rows.json"))


@needs_release
def test_hh_rlhf_file_with_hh_test_prompts_trains_without_them(tmp_path):
    hh = _test_prompts("hh")
    rows = [_hh(f"Could you suggest a good name for my new goldfish, number {i}?") for i in range(12)]
    rows += [_hh(p) for p in hh[:3]]                                      # verbatim, single turn
    rows.append(_hh("  " + hh[3].upper().replace(" ", "   ") + "  "))   # case and spacing changed
    rows.append(_hh(hh[4] + "!!"))                                       # punctuation added
    rows.append(_hh("Thanks, that helps.", earlier=hh[5]))               # the test prompt opens a dialogue
    leaked = {13, 14, 15, 16, 17, 18}
    data = write_jsonl(tmp_path / "hh.jsonl", rows)  # a plain file: data_dir harmless-base must not be appended

    out = tmp_path / "dpo"
    cfg = stage_config("train_dpo", out, *QUICK, "data=hh_rlhf", f"data.path={data}", f"train.ref_logps_dir={tmp_path}/s",
                       *GUARD)  # fmt: skip
    assert cfg.data.data_dir == "harmless-base"
    run_dpo(cfg, out)
    stats, summary, trained = _read(out)
    assert stats["rows_read"] == 18 and stats["rows_used"] == 12
    assert stats["removed"] == {"test_prompt_overlap": 6}
    assert stats["leakage"]["sets"] == {"release_test_set": 900}
    assert stats["leakage"]["removed"] == {"exact": 6, "near": 0}
    trained_rows = {int(i.rsplit(":", 1)[1]) for i in trained["train"]}
    assert trained_rows == set(range(1, 13)) and not trained_rows & leaked
    assert summary["data"]["pairs"] == 12


@needs_release
def test_pku_saferlhf_file_with_beaver_test_prompts_trains_without_them(tmp_path):
    beaver = _test_prompts("beaver")

    def row(prompt: str) -> dict:
        return {"prompt": prompt, "response_0": "No, I will not help.", "response_1": "Here is how.",
                "is_response_0_safe": True, "is_response_1_safe": False, "better_response_id": 0, "safer_response_id": 0}  # fmt: skip

    rows = [row(f"What is a polite way to decline wedding invitation number {i}?") for i in range(10)]
    rows += [row(p) for p in beaver[:4]] + [row(beaver[4].rstrip("?") + " ?")]
    data = write_jsonl(tmp_path / "pku" / "train.jsonl", rows)
    out = tmp_path / "sft"
    run_sft(stage_config("train_sft", out, *QUICK, "data=pku_saferlhf", f"data.path={data}", *GUARD), out)
    stats, summary, trained = _read(out)
    assert stats["rows_read"] == 15 and stats["rows_used"] == 10
    assert stats["removed"] == {"test_prompt_overlap": 5}
    assert {int(i.rsplit(":", 1)[1]) for i in trained["train"]} == set(range(1, 11))
    assert summary["data"]["pairs"] == 10 and summary["data"]["tokens"] > 0


def test_required_prompt_set_missing_stops_before_any_model_loads(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    # model.path names nothing: reaching the model would be a ModelNotFoundError, not the guard's ConfigError
    base = ["model=tiny", "model.path=/nonexistent/model", f"data.path={data}", "leakage.required=[release_test_set]"]
    missing = tmp_path / "gone" / "test_set.csv"
    cfg = stage_config("train_dpo", tmp_path / "a", *base, f"leakage.sets.release_test_set.path={missing}")
    with pytest.raises(ConfigError, match=rf"'release_test_set' \(path {missing}\)"):
        run_dpo(cfg, tmp_path / "a")
    cfg = stage_config("train_sft", tmp_path / "b", *base, "data=constructed", "~prompt_set@leakage.sets.release_test_set")
    with pytest.raises(ConfigError, match="required evaluation prompt set.*release_test_set not configured"):
        run_sft(cfg, tmp_path / "b")
    assert not (tmp_path / "a" / "data_stats.json").exists() and not (tmp_path / "b").exists()
