"""TRL's DPO trainer over our token ids, and a local metrics file.

* `PretokenizedDPOTrainer` is TRL's `DPOTrainer` that takes our pre-tokenized
  `prompt_ids/chosen_ids/rejected_ids` as they are (see `preprocess.py`) and counts its reference
  forward batches. Reference log-probs, and their cache, are TRL's (see `ref_logps.py` for the
  lasting location that lets a sweep compute them once).
* `MetricsJsonlCallback` appends one JSON object per logged step to `metrics.jsonl` on rank 0,
  whatever wandb does (on resume it first drops lines past the checkpoint's step).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from trl import DPOTrainer

log = logging.getLogger(__name__)

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


class PretokenizedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer over our pre-tokenized pairs, counting the reference forward batches it runs.

    Reference log-probs are TRL's own: with `precompute_ref_log_probs` it computes them once before
    training and caches them beside the dataset's Arrow file, keyed by the dataset's fingerprint and a
    hash of the reference weights. `ReferenceCache` gives the tokenized pairs a lasting file and a
    fingerprint that names the reference, so a later run finds TRL's cache file there. Counting the
    batches of the public `compute_ref_log_probs` (and their seconds, before training) lets tests and
    the run summary tell a reuse from a recomputation.
    """

    def __init__(self, *args, **kwargs):
        self.ref_forward_batches = 0
        self._pass_span: list[float] = []  # first start and last end of the reference forwards before `train`
        self._training = False
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # The one private override left: TRL 1.16's DPOTrainer has no public switch for pre-tokenized pairs
        # (SFTConfig has dataset_kwargs.skip_prepare_dataset; DPOConfig does not), and its tokenization
        # differs from ours (no max_prompt_length; a second EOS after ChatML's "<|im_end|>\n"): see preprocess.py.
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def compute_ref_log_probs(self, model, inputs):
        self.ref_forward_batches += 1
        if not self._training:
            self._pass_span[:1] = self._pass_span[:1] or [time.perf_counter()]
        result = super().compute_ref_log_probs(model, inputs)
        if not self._training:
            self._pass_span[1:] = [time.perf_counter()]
        return result

    @property
    def ref_pass_seconds(self) -> float:
        """Wall time of the precompute pass (batches, collation and forwards), 0 when nothing was computed."""
        return self._pass_span[1] - self._pass_span[0] if len(self._pass_span) == 2 else 0.0

    def train(self, *args, **kwargs):
        self._training = True
        # Under DeepSpeed, TRL precomputes through an inference engine wrapped around the policy module
        # itself; its ZeRO-3 hooks stay on that module and, with gradient checkpointing, break the
        # training engine's parameter trace ("pop from an empty deque"). Released before training; TRL
        # builds another if a later evaluation precomputes again.
        engine = getattr(self, "_precompute_engine", None)
        if engine is not None:
            engine.destroy()
            self._precompute_engine = None
        return super().train(*args, **kwargs)
