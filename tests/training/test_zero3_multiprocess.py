"""ZeRO-3 across two CPU processes (gloo), with the paper's recipe shrunk for the tiny model.

The recipe is `train=sft_paper` / `train=dpo_paper` (RMSprop, constant_with_warmup, gradient clipping
at 10, gradient checkpointing, ZeRO-3) with these changes for a CPU test: float32 instead of bf16,
4 optimizer steps of a global batch of 4 pairs/sequences, a learning rate (1e-4) at which 4 steps
move the losses, one warmup step, a checkpoint every 2 steps.

What must hold (each run is the real entry script in its own processes):

* the loss of every step under ZeRO-3 in 2 processes equals that of a single-process run of the same
  global batch (gradient accumulation 2 there, 1 here), to 1e-5 absolute: the same examples make
  each step, only the order of float sums differs (they agreed to all printed digits when written);
* the saved model loads back: the 16-bit gather of the sharded weights on save
  (`stage3_gather_16bit_weights_on_model_save`; float32 here) equals the ZeRO checkpoint of the same
  step converted by DeepSpeed's `zero_to_fp32`, and it is the model a single process trains;
* a run resumed from its last checkpoint (a copy of checkpoint-2 in a fresh out_dir) logs the same
  next losses as the uninterrupted run;
* the reference log-probs, precomputed before DPO, are the same computed in 1 or 2 processes (1e-5)
  under the same store key, and a second beta reuses them (no reference forward pass);
* the same two-process ZeRO-3 run through `accelerate launch` with conf/accelerate/zero3.yaml, and
  through `srun -n 2` on the localhost Slurm cluster.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from safer_instruct.training.distributed import free_port
from safer_instruct.training.trainers import read_metrics
from tests.helpers.slurm import cluster_problem
from tests.training.helpers import python, run_script, separable_pairs, write_jsonl

pytestmark = pytest.mark.slow
SLURM_PROBLEM = cluster_problem()
LOSS_TOLERANCE = 1e-5
SHRUNK = ["model=tiny", "train.bf16=false", "train.deepspeed=null", "train.max_steps=4", "train.global_batch_size=4",
          "train.per_device_train_batch_size=2", "train.learning_rate=1e-4", "train.warmup_steps=1", "train.save_steps=2",
          "train.logging_steps=1", "train.dataloader_num_workers=0"]  # fmt: skip
SFT = ["train/sft.py", "train=sft_paper", *SHRUNK]
DPO = ["train/dpo.py", "train=dpo_paper", *SHRUNK, "train.precompute_ref_batch_size=4"]
ZERO3 = "train.deepspeed=zero3"


def torchrun(*args: str) -> list[str]:
    return [str(Path(python()).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *args]


def run_ok(args: list[str]) -> None:
    proc = run_script(args, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def losses(out: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]


def summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zero3x2")


@pytest.fixture(scope="module")
def single_sft(runs) -> Path:
    out = runs / "sft-1proc"
    run_ok([python(), *SFT, f"out_dir={out}"])
    return out


@pytest.fixture(scope="module")
def zero3_sft(runs) -> Path:
    out = runs / "sft-zero3x2"
    run_ok(torchrun(*SFT, ZERO3, f"out_dir={out}"))
    return out


@pytest.fixture(scope="module")
def pairs(runs) -> Path:
    # 18 pairs: the reference pass (batches of 4) has 5 batches, one more on rank 0 than on rank 1.
    return write_jsonl(runs / "pairs.jsonl", separable_pairs(18))


def dpo_run(runs: Path, name: str, pairs: Path, store: str, *launch: str, extra: tuple[str, ...] = ()) -> Path:
    out = runs / name
    args = [*DPO, ZERO3, f"data.path={pairs}", f"out_dir={out}", f"train.ref_logps_dir={runs / store}", *extra]
    run_ok(torchrun(*args) if launch == ("torchrun",) else [python(), *args])
    return out


@pytest.fixture(scope="module")
def zero3_dpo_one(runs, pairs) -> Path:
    return dpo_run(runs, "dpo-zero3x1", pairs, "store-1proc")


@pytest.fixture(scope="module")
def zero3_dpo_two(runs, pairs) -> Path:
    return dpo_run(runs, "dpo-zero3x2", pairs, "store-2proc", "torchrun")


def test_sft_two_processes_equal_one_process_step_by_step(single_sft, zero3_sft):
    one, two = summary(single_sft), summary(zero3_sft)
    assert (one["world_size"], one["gradient_accumulation_steps"]) == (1, 2)
    assert (two["world_size"], two["gradient_accumulation_steps"]) == (2, 1)
    assert two["global_step"] == 4 and len(losses(zero3_sft)) == 4
    assert losses(zero3_sft) == pytest.approx(losses(single_sft), abs=LOSS_TOLERANCE)
    assert len(set(losses(zero3_sft))) == 4  # the steps differ: the comparison is not of one repeated value


def test_sft_saved_model_loads_back_and_is_the_zero_checkpoint(single_sft, zero3_sft):
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(zero3_sft / "model", dtype=torch.float32).state_dict()
    converted = get_fp32_state_dict_from_zero_checkpoint(str(zero3_sft / "checkpoint-4"))
    assert set(converted) <= set(saved) and len(converted) >= 10
    for name, tensor in converted.items():
        assert torch.equal(saved[name], tensor), name
    single = AutoModelForCausalLM.from_pretrained(single_sft / "model", dtype=torch.float32).state_dict()
    start = AutoModelForCausalLM.from_pretrained(summary(zero3_sft)["started_from"]["model"]).state_dict()
    moved = [name for name in single if not torch.equal(single[name], start[name])]
    assert moved, "training did not change the weights"
    for name in single:
        torch.testing.assert_close(saved[name], single[name], atol=1e-5, rtol=0, msg=name)


def test_sft_resumed_from_its_last_checkpoint_continues_with_the_same_losses(runs, zero3_sft):
    resumed = runs / "sft-zero3x2-resumed"
    resumed.mkdir()
    shutil.copytree(zero3_sft / "checkpoint-2", resumed / "checkpoint-2")  # what an interrupted run leaves
    run_ok(torchrun(*SFT, ZERO3, f"out_dir={resumed}"))
    assert summary(resumed)["resumed_from"].endswith("checkpoint-2")
    assert [row["step"] for row in read_metrics(resumed / "metrics.jsonl") if "loss" in row] == [3, 4]
    assert losses(resumed) == pytest.approx(losses(zero3_sft)[2:], abs=LOSS_TOLERANCE)


def test_dpo_two_processes_equal_one_process_step_by_step(zero3_dpo_one, zero3_dpo_two):
    one, two = summary(zero3_dpo_one), summary(zero3_dpo_two)
    assert (one["world_size"], one["gradient_accumulation_steps"]) == (1, 2)
    assert (two["world_size"], two["gradient_accumulation_steps"]) == (2, 1)
    assert losses(zero3_dpo_two) == pytest.approx(losses(zero3_dpo_one), abs=LOSS_TOLERANCE)
    assert losses(zero3_dpo_two)[0] == pytest.approx(np.log(2), abs=1e-6)  # policy = reference at step 1
    assert losses(zero3_dpo_two)[-1] < losses(zero3_dpo_two)[0] - 1e-4  # and it learns


def test_reference_logps_are_the_same_in_one_and_two_processes(zero3_dpo_one, zero3_dpo_two):
    events = [summary(out)["ref_logps"]["events"][0] for out in (zero3_dpo_one, zero3_dpo_two)]
    assert [event["status"] for event in events] == ["computed_and_stored", "computed_and_stored"]
    assert events[0]["key"] == events[1]["key"]  # the key does not depend on the number of processes
    assert [summary(out)["ref_logps"]["forward_batches"] for out in (zero3_dpo_one, zero3_dpo_two)] == [5, 3]
    stored = []
    for out in (zero3_dpo_one, zero3_dpo_two):
        entry = Path(summary(out)["ref_logps"]["store"]) / events[0]["key"]
        file = Path(summary(out)["ref_logps"]["events"][0]["file"])  # TRL's cache file, in the entry
        assert file.parent == entry
        values = Dataset.from_file(str(file))
        stored.append({column: np.asarray(values[f"ref_{column}_logps"]) for column in ("chosen", "rejected")})
        assert json.loads((entry / "meta.json").read_text())["rows"] == 18
    for column in ("chosen", "rejected"):
        assert stored[0][column].shape == (18,)
        np.testing.assert_allclose(stored[1][column], stored[0][column], atol=LOSS_TOLERANCE, rtol=0)
    # Chosen and rejected differ per pair (a mixed-up order would pair the wrong values).
    assert not np.allclose(stored[0]["chosen"], stored[0]["rejected"])


def test_a_second_beta_reuses_the_reference_logps_of_two_processes(runs, pairs, zero3_dpo_two):
    out = dpo_run(runs, "dpo-zero3x2-beta0.5", pairs, "store-2proc", "torchrun", extra=("train.beta=0.5",))
    ref = summary(out)["ref_logps"]
    assert ref["events"][0]["status"] == "reused" and ref["forward_batches"] == 0
    assert ref["events"][0]["key"] == summary(zero3_dpo_two)["ref_logps"]["events"][0]["key"]
    assert summary(out)["beta"] == 0.5
    assert losses(out)[0] == pytest.approx(np.log(2), abs=1e-6)
    assert losses(out)[1:] != pytest.approx(losses(zero3_dpo_two)[1:], abs=1e-4)  # beta changed the loss


def test_accelerate_launch_with_the_zero3_config_two_processes(runs, single_sft):
    # DeepSpeed from conf/accelerate/zero3.yaml (zero3_init_flag), train.deepspeed=null, as on a GPU node.
    out = runs / "sft-accelerate-zero3x2"
    accelerate = str(Path(python()).parent / "accelerate")
    run_ok([accelerate, "launch", "--config_file", "conf/accelerate/zero3.yaml", "--num_processes", "2",
            "--main_process_port", str(free_port()), *SFT, f"out_dir={out}"])  # fmt: skip
    assert (summary(out)["world_size"], summary(out)["gradient_accumulation_steps"]) == (2, 1)
    assert losses(out) == pytest.approx(losses(single_sft), abs=LOSS_TOLERANCE)


@pytest.mark.slurm
@pytest.mark.skipif(SLURM_PROBLEM is not None, reason=f"no usable Slurm here: {SLURM_PROBLEM}")
def test_srun_two_tasks_zero3_sft_equals_one_process(runs, single_sft):
    # srun without a launcher: each task derives RANK/WORLD_SIZE/MASTER_* from SLURM_* itself.
    out = runs / "sft-srun-zero3x2"
    run_ok(["srun", "-n", "2", "--cpus-per-task", "1", python(), *SFT, ZERO3, f"out_dir={out}"])
    assert (summary(out)["world_size"], summary(out)["gradient_accumulation_steps"]) == (2, 1)
    assert losses(out) == pytest.approx(losses(single_sft), abs=LOSS_TOLERANCE)
