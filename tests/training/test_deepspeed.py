"""DeepSpeed on CPU with the tiny model: ZeRO-2 and ZeRO-3 in one process, ZeRO-2 in two (torchrun).

Each run is the real entry script in its own process (DeepSpeed and accelerate keep process-wide
state). The first run JIT-compiles DeepSpeed's shm_comm op (~35 s, cached in TORCH_EXTENSIONS_DIR).
Because the global batch is fixed by config, every launch trains the same recipe: the losses must
equal those of a plain single-process run step for step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safer_instruct.training.distributed import free_port
from safer_instruct.training.trainers import read_metrics
from tests.helpers.slurm import cluster_problem
from tests.training.helpers import python, run_script, separable_pairs, write_jsonl

pytestmark = pytest.mark.slow
SLURM_PROBLEM = cluster_problem()
COMMON = ["model=tiny", "train.max_steps=2", "train.global_batch_size=4", "train.per_device_train_batch_size=2",
          "train.learning_rate=1e-3", "train.save_strategy=no"]  # fmt: skip
REF_BATCH = "train.precompute_ref_batch_size=4"  # DPO only: pairs per reference forward when precomputing


def _losses(out: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]


def _run(args: list[str]) -> None:
    proc = run_script(args, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ds-data") / "preference.jsonl", separable_pairs(16))


@pytest.fixture(scope="module")
def plain_dpo(tmp_path_factory, pairs) -> Path:
    out = tmp_path_factory.mktemp("plain") / "run"
    _run([python(), "train/dpo.py", *COMMON, REF_BATCH, f"data.path={pairs}", f"out_dir={out}",
          f"train.ref_logps_dir={out.parent / 'store'}"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def plain_sft(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain-sft") / "run"
    _run([python(), "train/sft.py", *COMMON, f"out_dir={out}"])
    return out


def test_zero2_sft_one_process_matches_plain_run(tmp_path, plain_sft):
    zero2 = tmp_path / "zero2"
    _run([python(), "train/sft.py", *COMMON, "train.deepspeed=zero2", f"out_dir={zero2}"])
    assert _losses(zero2) == pytest.approx(_losses(plain_sft), abs=1e-4)
    assert (zero2 / "model" / "model.safetensors").stat().st_size > 100_000
    config = json.loads((zero2 / "train_summary.json").read_text())
    assert config["global_step"] == 2


def test_zero3_dpo_one_process_precomputes_and_matches_plain_run(tmp_path, pairs, plain_dpo):
    out = tmp_path / "zero3"
    _run([python(), "train/dpo.py", *COMMON, REF_BATCH, "train.deepspeed=zero3", f"data.path={pairs}", f"out_dir={out}",
          f"train.ref_logps_dir={tmp_path / 'store'}"])  # fmt: skip
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["ref_logps"]["events"][0]["status"] == "computed_and_stored"
    assert _losses(out) == pytest.approx(_losses(plain_dpo), abs=1e-4)
    # ZeRO-3 gathers the sharded weights on save: a full model, trained away from its start
    from safetensors.torch import load_file

    saved = load_file(out / "model" / "model.safetensors")
    start = load_file(Path(summary["started_from"]["model"]) / "model.safetensors")
    assert sum(t.numel() for t in saved.values()) == summary["trainable_parameters"] == sum(t.numel() for t in start.values())
    assert all(saved[name].shape == start[name].shape for name in start)
    assert any(not saved[name].equal(start[name]) for name in start)


def test_zero2_dpo_two_processes_torchrun_same_recipe(tmp_path, pairs, plain_dpo):
    out = tmp_path / "zero2x2"
    torchrun = str(Path(python()).parent / "torchrun")
    _run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "train/dpo.py", *COMMON, REF_BATCH,
          "train.deepspeed=zero2", f"data.path={pairs}", f"out_dir={out}", f"train.ref_logps_dir={tmp_path / 'store'}"])  # fmt: skip
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["gradient_accumulation_steps"] == 1  # global 4 = 2 per device x 2 processes
    assert summary["ref_logps"]["forward_batches"] == 2  # 16 pairs, batches of 4, split over 2 ranks
    assert _losses(out) == pytest.approx(_losses(plain_dpo), abs=1e-4)
    assert len(read_metrics(out / "metrics.jsonl")) == 3  # written once (rank 0): 2 steps + the final summary


def test_accelerate_launch_with_the_zero2_config_two_processes(tmp_path, plain_sft):
    # DeepSpeed comes from conf/accelerate/zero2.yaml (train.deepspeed stays null), as on a GPU node.
    out = tmp_path / "accelerate"
    accelerate = str(Path(python()).parent / "accelerate")
    _run([accelerate, "launch", "--config_file", "conf/accelerate/zero2.yaml", "--num_processes", "2",
          "--main_process_port", str(free_port()), "train/sft.py", *COMMON, f"out_dir={out}"])  # fmt: skip
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["world_size"], summary["gradient_accumulation_steps"]) == (2, 1)
    assert _losses(out) == pytest.approx(_losses(plain_sft), abs=1e-4)


@pytest.mark.slurm
@pytest.mark.skipif(SLURM_PROBLEM is not None, reason=f"no usable Slurm here: {SLURM_PROBLEM}")
def test_srun_starts_the_entry_script_directly(tmp_path, plain_sft):
    # srun without a launcher: the script derives RANK/WORLD_SIZE/MASTER_* from SLURM_* itself.
    out = tmp_path / "srun"
    _run(["srun", "-n", "2", "--cpus-per-task", "1", python(), "train/sft.py", *COMMON, "train.deepspeed=zero2",
          f"out_dir={out}"])  # fmt: skip
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["world_size"], summary["gradient_accumulation_steps"]) == (2, 1)
    assert _losses(out) == pytest.approx(_losses(plain_sft), abs=1e-4)
