"""Training settings as dataclasses: one field per config key, each with help text, checked at init.

The Hydra groups `conf/train/*.yaml` (key `train`) and `conf/peft/*.yaml` (key `peft`) are read into
these classes (`settings_from`). Like TRL's configs, every field documents itself in
`metadata["help"]`, and `__post_init__` rejects inconsistent values with a message that says what to
change, before any model is loaded. `to_trl_kwargs` turns them into TRL `SFTConfig` / `DPOConfig`
arguments; the global batch is fixed here and gradient accumulation is derived from the world size,
so the same recipe trains identically on 1 GPU or 8.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from safer_instruct.errors import ConfigError
from safer_instruct.paths import conf_dir

T = TypeVar("T")

OPTIMIZERS = ("rmsprop", "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "paged_adamw_8bit", "adamw_bnb_8bit")
RESUME_MODES = ("auto", "never")
# TRL 1.16 DPO loss types (DPOConfig.loss_type); several may be combined with loss_weights.
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


def _help(default: Any, text: str, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TrainSettings:
    """Settings shared by every training stage (`train.*`)."""

    global_batch_size: int = _help(64, "Sequences (pairs, for DPO) per optimizer step over all processes. Fixed by the recipe: "
                                       "gradient accumulation = global / (per_device_batch_size x world size).")
    per_device_batch_size: int = _help(4, "Sequences (pairs) each process runs forward at once; lower it on memory errors.")
    learning_rate: float = _help(5e-7, "Peak learning rate (the paper: 5e-7 with RMSprop).")
    optimizer: str = _help("rmsprop", f"Optimizer name as transformers spells it: {', '.join(OPTIMIZERS)} (others are passed through).")
    lr_scheduler: str = _help("constant_with_warmup", "Learning-rate schedule after warmup (transformers name: "
                                                     "constant_with_warmup, linear, cosine, ...).")
    warmup_steps: float = _help(150, "Linear warmup: optimizer steps (>= 1), or a share of all steps (below 1, e.g. 0.03 as "
                                     "Stanford Alpaca). Passed to transformers as is.")
    num_epochs: float = _help(1.0, "Passes over the data; ignored when max_steps > 0.")
    max_steps: int = _help(-1, "Stop after this many optimizer steps (-1: run num_epochs).")
    weight_decay: float = _help(0.0, "Weight decay.")
    max_grad_norm: float = _help(10.0, "Gradient clipping norm (the DPO reference code uses 10).")
    bf16: bool = _help(True, "Train in bfloat16 mixed precision (GPU recipes). Set false for exact fp32 CPU runs.")
    gradient_checkpointing: bool = _help(True, "Recompute activations in backward to save memory (~20% slower).")
    deepspeed: str | None = _help(None, "DeepSpeed config: a name under conf/deepspeed (zero2, zero3, zero3_offload) or a "
                                        "JSON path; null for none. Works under `accelerate launch`, torchrun and srun.")
    logging_steps: int = _help(10, "Log metrics (metrics.jsonl, wandb) every this many optimizer steps.")
    save_steps: int = _help(500, "Write a resumable checkpoint every this many optimizer steps (0: only at the end).")
    save_total_limit: int | None = _help(2, "Keep at most this many checkpoints (older ones are deleted).")
    resume: str = _help("auto", "auto: continue from the last checkpoint in out_dir if there is one; never: start over; "
                                "or a checkpoint folder path.")
    merge_adapter: bool = _help(True, "LoRA/QLoRA: also save the adapter merged into the base weights as out_dir/model "
                                      "(the folder the next stage loads). The adapter alone is always saved in out_dir/adapter.")
    eval_size: int = _help(0, "Rows held out from the training data for evaluation during training (0: none).")
    eval_steps: int = _help(0, "Evaluate every this many steps when eval_size > 0 (0: only at the end).")
    dataloader_num_workers: int = _help(0, "Worker processes feeding batches (0: in the main process).")

    def __post_init__(self) -> None:
        for name in ("global_batch_size", "per_device_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.global_batch_size % self.per_device_batch_size:
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                f"train.per_device_batch_size={self.per_device_batch_size}: pick a per-device batch that divides it"
            )
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"train.max_steps must be a positive step count or -1 (use num_epochs), got {self.max_steps}")
        if self.max_steps == -1 and self.num_epochs <= 0:
            raise ConfigError("train.num_epochs must be > 0 when train.max_steps=-1")
        if self.warmup_steps < 0 or self.logging_steps < 1 or self.save_steps < 0:
            raise ConfigError("train.warmup_steps and train.save_steps must be >= 0, train.logging_steps >= 1")
        if self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps):
            raise ConfigError(f"train.warmup_steps={self.warmup_steps}: give whole steps (>= 1) or a share of all steps (< 1)")
        if self.warmup_steps >= 1:
            self.warmup_steps = int(self.warmup_steps)
        if self.resume not in RESUME_MODES and not Path(self.resume).is_dir():
            raise ConfigError(f"train.resume must be auto, never or an existing checkpoint folder, got '{self.resume}'")
        if self.eval_size < 0:
            raise ConfigError(f"train.eval_size must be >= 0, got {self.eval_size}")
        if self.deepspeed:
            self.deepspeed = str(deepspeed_config_path(self.deepspeed))

    def gradient_accumulation(self, world_size: int) -> int:
        """Accumulation steps that keep the global batch fixed on `world_size` processes."""
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} cannot be split over {world_size} process(es) x "
                f"per_device_batch_size={self.per_device_batch_size}: choose a per-device batch size or a number of "
                "processes whose product divides the global batch"
            )
        return self.global_batch_size // per_step

    def trainer_kwargs(self, out_dir: Path, world_size: int, seed: int, report_to: str) -> dict[str, Any]:
        """Arguments for a TRL `SFTConfig`/`DPOConfig` (both are transformers `TrainingArguments`)."""
        import torch

        return dict(
            output_dir=str(out_dir),
            per_device_train_batch_size=self.per_device_batch_size,
            per_device_eval_batch_size=self.per_device_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation(world_size),
            learning_rate=self.learning_rate,
            optim=self.optimizer,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_steps,
            num_train_epochs=self.num_epochs,
            max_steps=self.max_steps,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            bf16=self.bf16,
            gradient_checkpointing=self.gradient_checkpointing,
            deepspeed=self.deepspeed,
            logging_steps=self.logging_steps,
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            save_total_limit=self.save_total_limit,
            eval_strategy=("steps" if self.eval_steps else "epoch") if self.eval_size else "no",
            eval_steps=self.eval_steps or None,
            dataloader_num_workers=self.dataloader_num_workers,
            seed=seed,
            data_seed=seed,
            report_to=report_to,
            use_cpu=not torch.cuda.is_available(),
            remove_unused_columns=True,
            save_only_model=False,
        )


@dataclass
class SFTSettings(TrainSettings):
    """SFT (`train sft`) and reversed instruction tuning (`train reverse`): loss on the response tokens only."""


@dataclass
class DPOSettings(TrainSettings):
    """DPO (`train dpo`): the policy starts from the SFT model, which is also the reference."""

    beta: float = _help(0.1, "DPO temperature: how far the policy may move from the reference (the paper: 0.1).")
    loss_type: list[str] = _help(None, "TRL loss type(s): sigmoid (DPO), ipo, hinge, robust, apo_zero, ... ; several are "
                                       "combined with loss_weights.", factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = _help(None, "Weights of the loss types (null: 1 each).")
    label_smoothing: float = _help(0.0, "Conservative/robust DPO label smoothing in [0, 0.5).")
    precompute_ref_logps: bool = _help(True, "Compute the reference log-probs once before training (no reference forward "
                                             "per step). Needed for the persisted cache.")
    ref_logps_cache: bool = _help(True, "Persist the precomputed reference log-probs on disk, keyed by (reference model, "
                                        "dataset, tokenization), and reuse them in later runs (a beta/lr sweep pays once).")
    ref_logps_dir: str | None = _help(None, "Folder of the reference log-prob store (null: <cache root>/ref_logps).")
    precompute_ref_batch_size: int | None = _help(None, "Pairs per reference forward when precomputing (null: 2x per-device).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = list(self.loss_type)
        unknown = [name for name in self.loss_type if name not in DPO_LOSS_TYPES]
        if unknown:
            raise ConfigError(f"train.loss_type {unknown} unknown: choose from {', '.join(DPO_LOSS_TYPES)}")
        if self.beta <= 0:
            raise ConfigError(f"train.beta must be > 0, got {self.beta}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ConfigError(f"train.loss_weights needs one weight per loss type ({len(self.loss_type)}), got {len(self.loss_weights)}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"train.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.ref_logps_cache and not self.precompute_ref_logps:
            raise ConfigError("train.ref_logps_cache=true needs train.precompute_ref_logps=true (or set ref_logps_cache=false)")


PEFT_METHODS = ("none", "lora", "qlora")


@dataclass
class PeftSettings:
    """Parameter-efficient fine-tuning (`peft.*`): none (full fine-tuning), LoRA, or QLoRA (4-bit base + LoRA)."""

    method: str = _help("none", "none: full fine-tuning; lora: LoRA adapters; qlora: 4-bit (bitsandbytes) base + LoRA.")
    r: int = _help(16, "LoRA rank.")
    alpha: int = _help(32, "LoRA alpha (scaling = alpha / r).")
    dropout: float = _help(0.05, "Dropout on the LoRA path.")
    target_modules: Any = _help("all-linear", "Modules that get adapters: all-linear or a list of names (q_proj, v_proj, ...).")
    quant_type: str = _help("nf4", "QLoRA 4-bit data type: nf4 or fp4.")
    double_quant: bool = _help(True, "QLoRA: quantize the quantization constants too (saves ~0.4 bits/parameter).")
    compute_dtype: str = _help("bfloat16", "QLoRA: dtype of the 4-bit matmuls (bfloat16 or float32).")

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ConfigError(f"peft.method must be one of {', '.join(PEFT_METHODS)}, got '{self.method}'")
        if self.r < 1 or self.alpha < 1:
            raise ConfigError(f"peft.r and peft.alpha must be >= 1, got r={self.r} alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"peft.dropout must be in [0, 1), got {self.dropout}")
        if self.quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"peft.quant_type must be nf4 or fp4, got '{self.quant_type}'")
        if self.compute_dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(f"peft.compute_dtype must be bfloat16, float16 or float32, got '{self.compute_dtype}'")
        if not isinstance(self.target_modules, str):
            self.target_modules = [str(name) for name in self.target_modules]

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def lora_config(self):
        """The peft `LoraConfig`, or None for full fine-tuning."""
        if not self.enabled:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )

    def quantization_config(self):
        """The bitsandbytes 4-bit config for QLoRA, or None."""
        if self.method != "qlora":
            return None
        import torch
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
            bnb_4bit_quant_storage=getattr(torch, self.compute_dtype),
        )

    def identity(self) -> dict[str, Any]:
        """What of these settings changes the reference model's outputs (quantization only)."""
        if self.method != "qlora":
            return {}
        return {"quantization": "bnb-4bit", "quant_type": self.quant_type, "double_quant": self.double_quant,
                "compute_dtype": self.compute_dtype}  # fmt: skip


def settings_from(cls: type[T], node: Any, key: str) -> T:
    """Build a settings dataclass from a config node, naming unknown keys instead of ignoring them."""
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"{key}: {err}") from None


def deepspeed_config_path(name: str) -> Path:
    """A DeepSpeed JSON by name (conf/deepspeed/<name>.json) or path."""
    candidate = Path(name).expanduser()
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate.resolve()
    named = conf_dir() / "deepspeed" / f"{name}.json"
    if named.is_file():
        return named
    known = sorted(p.stem for p in (conf_dir() / "deepspeed").glob("*.json"))
    raise ConfigError(f"train.deepspeed '{name}' is neither a JSON file nor one of {', '.join(known)}")


def world_size() -> int:
    """Processes taking part in training (set by accelerate, torchrun, or srun via `slurm_to_torch_env`)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)
