"""TRL trainers with the two things we add: persisted reference log-probs and a local metrics file.

* `PersistentRefDPOTrainer` is TRL's `DPOTrainer` that (a) takes our pre-tokenized
  `prompt_ids/chosen_ids/rejected_ids` as they are (see `preprocess.py`), and (b) when
  `precompute_ref_log_probs` is on, looks the reference log-probs up in a `RefLogpsStore` before
  computing them, and stores what it computed. It counts reference forward batches, so tests and
  the run summary can tell a reuse from a recomputation.
* `MetricsJsonlCallback` appends one JSON object per logged step to `metrics.jsonl` on rank 0,
  whatever wandb does (on resume it first drops lines past the checkpoint's step).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback
from trl import DPOTrainer

from safer_instruct.training.preprocess import fingerprint_columns
from safer_instruct.training.ref_logps import RefLogpsStore, store_key

log = logging.getLogger(__name__)
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")

# Metrics we promise in metrics.jsonl whenever the trainer reports them (TRL names).
DPO_METRICS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen",
               "logps/rejected", "learning_rate", "grad_norm")  # fmt: skip


class MetricsJsonlCallback(TrainerCallback):
    """Write every log event as one JSON line: {"step", "epoch", ...metrics} (rank 0 only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        # Resuming at step N: lines written after N by the interrupted run will be logged again.
        if state.is_world_process_zero and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if line.strip() and _step(line) <= state.global_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[key] = float(value) if math.isfinite(float(value)) else str(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


class PersistentRefDPOTrainer(DPOTrainer):
    """DPOTrainer over pre-tokenized pairs, with reference log-probs reused from a disk store.

    Args (besides DPOTrainer's):
        ref_store: where reference log-probs live; None disables persistence.
        ref_key_parts: the key components that do not depend on the dataset (reference model identity,
            loading and tokenization settings); the fingerprint of each dataset's token ids is added to them.
    """

    def __init__(self, *args, ref_store: RefLogpsStore | None = None, ref_key_parts: dict[str, Any] | None = None,
                 **kwargs):  # fmt: skip
        self.ref_store = ref_store
        self.ref_key_parts = dict(ref_key_parts or {})
        self.ref_forward_batches = 0
        self.ref_cache_events: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:  # already tokenized by safer_instruct.training.preprocess
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def compute_ref_log_probs(self, model, inputs):
        self.ref_forward_batches += 1
        return super().compute_ref_log_probs(model, inputs)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        from accelerate.utils import broadcast_object_list

        # The key hashes exactly the token ids whose log-probs are looked up (whatever dataset this is).
        fingerprint = None
        if self.ref_store is not None and set(TOKEN_COLUMNS) <= set(dataset.column_names):
            fingerprint = fingerprint_columns({column: dataset[column] for column in TOKEN_COLUMNS})
        key = None
        if fingerprint is not None:
            key = store_key({**self.ref_key_parts, "dataset": fingerprint})
        found = [None]
        if key is not None and self.accelerator.is_main_process:
            found = [self.ref_store.load(key, len(dataset))]
        found = broadcast_object_list(found, from_process=0) if self.accelerator.num_processes > 1 else found
        if found[0] is not None:
            chosen, rejected = found[0]
            self.ref_cache_events.append({"dataset": name, "key": key, "status": "reused", "rows": len(dataset)})
            log.info("reference log-probs for %s reused from %s (no reference forward pass)", name,
                     self.ref_store.entry(key))  # fmt: skip
            return _with_ref_columns(dataset, chosen, rejected)
        started = time.perf_counter()
        chosen, rejected = self._compute_ref_logps(dataset, name, batch_size)
        seconds = round(time.perf_counter() - started, 3)
        status = "computed"
        if key is not None:
            if self.accelerator.is_main_process:
                self.ref_store.save(key, chosen, rejected, {**self.ref_key_parts, "dataset": fingerprint, "split": name})
                log.info("reference log-probs for %s stored in %s", name, self.ref_store.entry(key))
            self.accelerator.wait_for_everyone()
            status = "computed_and_stored"
        self.ref_cache_events.append({"dataset": name, "key": key, "status": status, "rows": len(dataset),
                                      "seconds": seconds})  # fmt: skip
        return _with_ref_columns(dataset, chosen, rejected)

    def _compute_ref_logps(self, dataset, name: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """One pass of the reference model over a dataset, results in dataset order on every rank.

        Unlike TRL's pass (dataset order), pairs go through in order of length: a batch is padded to its
        longest pair, so batching pairs of similar length spends little of the pass on padding tokens.
        """
        from torch.utils.data import DataLoader
        from trl.models import prepare_deepspeed

        order = length_order(dataset)
        loader = DataLoader(dataset.select(order), batch_size=batch_size, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, shuffle=False)  # fmt: skip
        loader = self.accelerator.prepare(loader)
        if self.ref_model is None and self.is_deepspeed_enabled:
            # Before `train`, DeepSpeed has not placed/gathered the weights yet: wrap them for inference once.
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        chosen, rejected = [], []
        for batch in loader:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(model, batch)
            ref_chosen, ref_rejected = self.accelerator.gather_for_metrics((ref_chosen, ref_rejected))
            chosen.append(ref_chosen.float().cpu())
            rejected.append(ref_rejected.float().cpu())
        log.info("computed reference log-probs for %d %s pairs", len(dataset), name)
        in_dataset_order = np.argsort(order)
        return torch.cat(chosen).numpy()[in_dataset_order], torch.cat(rejected).numpy()[in_dataset_order]


def length_order(dataset) -> np.ndarray:
    """Row indices sorted by the padded length of each pair (prompt + its longer completion); stable."""
    if not set(TOKEN_COLUMNS) <= set(dataset.column_names):
        return np.arange(len(dataset))
    lengths = [len(prompt) + max(len(chosen), len(rejected)) for prompt, chosen, rejected in
               zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)]  # fmt: skip
    return np.argsort(np.asarray(lengths), kind="stable")


def _with_ref_columns(dataset, chosen: np.ndarray, rejected: np.ndarray):
    if len(chosen) != len(dataset):
        raise RuntimeError(f"reference log-probs for {len(chosen)} rows, dataset has {len(dataset)}")
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        if column in dataset.column_names:
            dataset = dataset.remove_columns(column)
    dataset = dataset.add_column("ref_chosen_logps", [float(x) for x in chosen])
    return dataset.add_column("ref_rejected_logps", [float(x) for x in rejected])


def local_rank_zero() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0"
