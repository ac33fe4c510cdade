"""DPO on the tiny model: full, LoRA, QLoRA; learning on separable pairs; TRL's reference log-probs kept for later runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from safer_instruct.errors import DataError
from safer_instruct.training.run import run_dpo
from safer_instruct.training.trainers import read_metrics
from tests.training.helpers import ParamWatcher, separable_pairs, stage_config, write_jsonl

QUICK = ["model=tiny", "train.learning_rate=1e-3", "train.global_batch_size=4", "train.per_device_train_batch_size=2",
         "train.save_strategy=no"]  # fmt: skip


@pytest.fixture()
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "data" / "preference.jsonl", separable_pairs(16))


def _dpo(out, pairs_file, store, *overrides):
    cfg = stage_config("train_dpo", out, *QUICK, "train.precompute_ref_batch_size=4", f"data.path={pairs_file}",
                       f"train.ref_logps_dir={store}", *overrides)  # fmt: skip
    return cfg


@pytest.mark.parametrize("peft", ["none", "lora", "qlora"])
def test_dpo_trains_every_trainable_parameter(tmp_path, pairs_file, peft):
    overrides = ["train.max_steps=3", f"peft={peft}"]
    if peft == "qlora":
        overrides.append("peft.compute_dtype=float32")
    cfg = _dpo(tmp_path / "run", pairs_file, tmp_path / "store", *overrides)
    watcher = ParamWatcher()
    summary = run_dpo(cfg, tmp_path / "run", callbacks=[watcher])
    assert watcher.checked > 0 and watcher.unchanged == []
    assert watcher.quantized == (peft == "qlora")
    rows = [row for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in row]
    assert len(rows) == 3
    for row in rows:
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
            assert math.isfinite(row[key]), key
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4  # the policy starts equal to its reference
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert (tmp_path / "run" / "adapter").is_dir() == (peft != "none")
    assert summary["ref_logps"]["events"][0]["status"] == "computed_and_stored"


def test_dpo_reward_accuracy_rises_above_half_on_separable_pairs(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", separable_pairs(40))
    out = tmp_path / "run"
    cfg = _dpo(out, data, tmp_path / "store", "train.max_steps=8", "train.eval_size=8", "train.eval_steps=8")
    run_dpo(cfg, out)
    metrics = read_metrics(out / "metrics.jsonl")
    first = next(row for row in metrics if "rewards/accuracies" in row)
    evals = [row for row in metrics if "eval_rewards/accuracies" in row]
    assert first["rewards/accuracies"] == 0.0  # at step 1 policy == reference: no margin yet
    assert evals and evals[-1]["eval_rewards/accuracies"] > 0.5  # on 8 held-out pairs
    assert evals[-1]["eval_rewards/margins"] > 0


def test_beta_sweep_reuses_stored_reference_logps_with_the_same_losses(tmp_path, pairs_file):
    store = tmp_path / "store"
    first = run_dpo(_dpo(tmp_path / "b05", pairs_file, store, "train.beta=0.5", "train.max_steps=3"), tmp_path / "b05")
    second = run_dpo(_dpo(tmp_path / "b01", pairs_file, store, "train.beta=0.1", "train.max_steps=3"), tmp_path / "b01")
    live = run_dpo(_dpo(tmp_path / "live", pairs_file, store, "train.beta=0.1", "train.max_steps=3",
                        "train.precompute_ref_log_probs=false", "train.ref_logps_cache=false"), tmp_path / "live")  # fmt: skip

    assert first["ref_logps"]["forward_batches"] == 4  # 16 pairs / precompute batch of 4
    assert first["ref_logps"]["events"][0]["status"] == "computed_and_stored"
    assert second["ref_logps"]["forward_batches"] == 0
    assert second["ref_logps"]["events"][0]["status"] == "reused"
    assert live["ref_logps"]["events"] == []
    stored = [row for row in read_metrics(tmp_path / "b01" / "metrics.jsonl") if "loss" in row]
    computed = [row for row in read_metrics(tmp_path / "live" / "metrics.jsonl") if "loss" in row]
    assert len(stored) == len(computed) == 3
    for a, b in zip(stored, computed, strict=True):  # same reference values => same losses and rewards
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), (a["step"], key)
    assert stored[1]["loss"] != pytest.approx(stored[0]["loss"], abs=1e-3)  # the policy moved


def test_changed_key_or_corrupt_store_recomputes(tmp_path, pairs_file):
    store = tmp_path / "store"
    base = run_dpo(_dpo(tmp_path / "a", pairs_file, store, "train.max_steps=1"), tmp_path / "a")
    key = base["ref_logps"]["events"][0]["key"]
    entry = Path(base["ref_logps"]["events"][0]["file"])  # TRL's cache file, in the lasting entry of these pairs
    assert entry.parent == store / key and (store / key / "pairs.arrow").is_file()
    reference = np.asarray(Dataset.from_file(str(entry))["ref_chosen_logps"])

    # another tokenization setting is another key: computed, the first entry untouched
    other = run_dpo(_dpo(tmp_path / "b", pairs_file, store, "train.max_steps=1", "model.max_prompt_length=12"), tmp_path / "b")
    assert other["ref_logps"]["events"][0]["status"] == "computed_and_stored"
    assert other["ref_logps"]["events"][0]["key"] != key

    # flip bytes in the stored file: detected by its checksum, recomputed, stored again
    blob = bytearray(entry.read_bytes())
    blob[-40:-30] = bytes(10)
    entry.write_bytes(bytes(blob))
    again = run_dpo(_dpo(tmp_path / "c", pairs_file, store, "train.max_steps=1"), tmp_path / "c")
    event = again["ref_logps"]["events"][0]
    assert (event["key"], event["status"], event["rows"], event["file"]) == (key, "computed_and_stored", 16, str(entry))
    assert again["ref_logps"]["forward_batches"] == 4
    np.testing.assert_allclose(Dataset.from_file(str(entry))["ref_chosen_logps"], reference, rtol=1e-5)
    meta = json.loads((store / key / "meta.json").read_text())
    assert meta["rows"] == 16 and meta["dataset"] == json.loads((tmp_path / "a" / "data_stats.json").read_text())["fingerprints"]["train"]


def test_dpo_refuses_data_without_rejected_responses(tmp_path):
    data = write_jsonl(tmp_path / "sft_only.jsonl", [{"prompt": f"q{i}", "chosen": "a"} for i in range(4)])
    cfg = stage_config("train_dpo", tmp_path / "run", *QUICK, f"data.path={data}")
    with pytest.raises(DataError, match="usable for SFT only"):
        run_dpo(cfg, tmp_path / "run")


def test_rows_of_different_sizes_train_on_the_same_number_of_pairs_drawn_by_seed(tmp_path):
    """Fair rows: sources of 12 and 40 pairs both train on data.sample_size=8; the seed decides which 8."""
    small = write_jsonl(tmp_path / "small.jsonl", separable_pairs(12))
    large = write_jsonl(tmp_path / "large.jsonl", separable_pairs(40))
    runs = {}
    for name, data, seed in (("small", small, 3), ("large", large, 3), ("large_again", large, 3), ("large_other", large, 4)):
        out = tmp_path / name
        cfg = _dpo(out, data, tmp_path / "store", "train.num_train_epochs=1", "data.sample_size=8", f"data.sample_seed={seed}")
        summary = run_dpo(cfg, out)
        stats = json.loads((out / "data_stats.json").read_text())
        runs[name] = (summary["data"], stats, json.loads((out / "train_rows.json").read_text())["train"])
    for name, (data, stats, trained) in runs.items():
        assert data["pairs"] == len(trained) == stats["rows_used"] == 8, name
        assert data["optimizer_steps"] == data["optimizer_steps_planned"] == 2  # 8 pairs, global batch 4, 1 epoch
        assert data["sample"] == {"size": 8, "seed": 3 if name != "large_other" else 4, "stratified_by": None,
                                  "matched": True, "available": 12 if name == "small" else 40}  # fmt: skip
        assert data["tokens"] == stats["tokens"] > 0
    assert runs["small"][1]["removed"] == {"not_sampled": 4} and runs["large"][1]["removed"] == {"not_sampled": 32}
    assert runs["large_again"][2] == runs["large"][2]  # same seed, same rows (source_ids)
    assert runs["large_other"][2] != runs["large"][2]
    assert runs["large_again"][0]["tokens"] == runs["large"][0]["tokens"]


def test_other_trl_loss_types_combined(tmp_path, pairs_file):
    cfg = _dpo(tmp_path / "run", pairs_file, tmp_path / "store", "train.max_steps=2", "train.loss_type=[ipo,sft]",
               "train.loss_weights=[1.0,0.5]")  # fmt: skip
    run_dpo(cfg, tmp_path / "run")
    rows = [row for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in row]
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)
    assert rows[0]["loss"] != pytest.approx(math.log(2), abs=1e-3)  # not the sigmoid loss


@pytest.mark.slow
def test_cli_beta_sweep_multirun_reuses_the_reference(tmp_path, pairs_file):
    from pathlib import Path

    from tests.training.helpers import python, run_script

    proc = run_script([str(Path(python()).parent / "safer-instruct"), "train", "dpo", "-m", "model=tiny",
                       f"data.path={pairs_file}", "train.beta=0.1,0.5", "train.max_steps=1", f"out_dir={tmp_path / 'sweep'}",
                       f"train.ref_logps_dir={tmp_path / 'store'}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads((tmp_path / "sweep" / str(i) / "train_summary.json").read_text()) for i in (0, 1)]
    assert [job["beta"] for job in jobs] == [0.1, 0.5]
    assert [job["ref_logps"]["events"][0]["status"] for job in jobs] == ["computed_and_stored", "reused"]
    assert [job["ref_logps"]["forward_batches"] for job in jobs] == [2, 0]  # 16 pairs, batches of 2 x 4


def test_dpo_starts_from_an_sft_lora_adapter_folder(tmp_path, pairs_file):
    from safer_instruct.training.run import run_sft
    from tests.training.helpers import stage_config as compose_stage

    sft_out = tmp_path / "sft"
    run_sft(compose_stage("train_sft", sft_out, *QUICK, "train.max_steps=2", "peft=lora", "train.merge_adapter=false"), sft_out)
    assert not (sft_out / "model").exists() and (sft_out / "adapter" / "adapter_config.json").is_file()
    out = tmp_path / "dpo"
    summary = run_dpo(_dpo(out, pairs_file, tmp_path / "store", "train.max_steps=2", f"model.path={sft_out / 'adapter'}"), out)
    assert summary["started_from"]["adapter"] == str(sft_out / "adapter")
    rows = [row for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4  # reference = the SFT model (base + its adapter, merged)
    meta = json.loads((tmp_path / "store" / summary["ref_logps"]["events"][0]["key"] / "meta.json").read_text())
    assert len(meta["reference"]) == 2  # base identity and adapter identity


def test_precomputed_reference_logps_are_each_pairs_own_in_dataset_order(tmp_path):
    """TRL's precompute over our cached pairs: every pair gets its own log-probs, in dataset order."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from safer_instruct.model_kit import load_tokenizer, resolve_model
    from safer_instruct.training.ref_logps import ReferenceCache
    from safer_instruct.training.trainers import PretokenizedDPOTrainer

    path = resolve_model("kit:tiny")
    generator = np.random.default_rng(0)
    # (prompt, chosen, rejected) lengths, unsorted on purpose: batches mix short and long pairs
    lengths = [(3, 9, 2), (1, 1, 30), (12, 4, 4), (2, 17, 5), (6, 2, 11), (9, 25, 1), (4, 6, 6)]
    names = ("prompt_ids", "chosen_ids", "rejected_ids")
    columns = {name: [generator.integers(5, 100, size=sizes[i]).tolist() for sizes in lengths] for i, name in enumerate(names)}
    dataset, key = ReferenceCache.at(tmp_path / "store").dataset(columns, {"reference": ["test"]})

    trainer = PretokenizedDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), processing_class=load_tokenizer(path),
        args=DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", precompute_ref_log_probs=True,
                       precompute_ref_batch_size=3),
        train_dataset=dataset,
    )  # fmt: skip
    assert trainer.ref_forward_batches == 3  # 7 pairs in batches of 3
    chosen, rejected = trainer.train_dataset["ref_chosen_logps"], trainer.train_dataset["ref_rejected_logps"]
    one_by_one = [trainer.compute_ref_log_probs(trainer.model, trainer.data_collator([row])) for row in dataset]
    np.testing.assert_allclose(chosen, [c.item() for c, _ in one_by_one], rtol=1e-4)  # padding changes fp32 sums by ~1e-5
    np.testing.assert_allclose(rejected, [r.item() for _, r in one_by_one], rtol=1e-4)
    assert len(set(np.round(chosen, 3))) == len(dataset)  # distinct values: a mix-up could not pass unnoticed
    assert [Path(f["filename"]).parent for f in trainer.train_dataset.cache_files] == [tmp_path / "store" / key] * 2
