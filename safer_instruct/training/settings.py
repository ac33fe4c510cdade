"""Training settings: TRL's own config fields, plus the few things that are ours, checked before a model loads.

`train.*` (the Hydra group `conf/train/*.yaml`) holds two kinds of keys:

* fields of TRL's `SFTConfig` / `DPOConfig` (transformers `TrainingArguments` underneath), by their own
  names: `learning_rate`, `optim`, `num_train_epochs`, `per_device_train_batch_size`, `beta`,
  `loss_type`, ... TRL owns their meaning and defaults; a preset sets what its recipe changes, and
  `trl_config` hands them through, so TRL's validation speaks for itself;
* our additions, declared below with help text: the global batch (gradient accumulation follows the
  world size, so a recipe trains identically on 1 GPU or 8), DeepSpeed by name, resume, the merged
  adapter, the held-out split, and where reference log-probs are kept.

Every preset builds on `train/schema_sft` or `train/schema_dpo` (registered with Hydra below): our fields at
their dataclass defaults, and the TRL fields a recipe tunes (`TUNED_TRL_FIELDS`) at the installed TRL's own
defaults. So a preset sets only what its recipe changes, and `train.max_steps=10` still overrides by name, its
type checked before TRL (and torch) is imported in the process.

`peft.*` (`conf/peft/*.yaml`) is ours entirely (`PeftSettings`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from safer_instruct.errors import ConfigError
from safer_instruct.paths import cache_root, conf_dir
from safer_instruct.schema import node_values, plain

T = TypeVar("T")

RESUME_MODES = ("auto", "never")
# TRL fields we fill in from elsewhere (the run, the model preset, the world size): never set in train.*.
DERIVED = {
    "output_dir": "out_dir", "gradient_accumulation_steps": "train.global_batch_size and the world size",
    "seed": "seed", "data_seed": "seed", "report_to": "tracking", "run_name": "the stage and out_dir",
    "use_cpu": "whether CUDA is available", "max_length": "model.max_length", "model_init_kwargs": "model.dtype",
}  # fmt: skip


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@cache
def _trl_fields(config_name: str) -> dict[str, dataclasses.Field]:
    import trl

    return {f.name: f for f in dataclasses.fields(getattr(trl, config_name))}


# The TRL fields the presets tune: the stage schema holds them (at TRL's defaults, read below) so that Hydra
# overrides them by name (`train.max_steps=10`) and checks the type of a new value before anything heavy loads.
TUNED_TRL_FIELDS: dict[str, tuple[str, ...]] = {
    "SFTConfig": (
        "per_device_train_batch_size", "learning_rate", "optim", "lr_scheduler_type", "warmup_steps", "num_train_epochs",
        "max_steps", "weight_decay", "max_grad_norm", "bf16", "gradient_checkpointing", "logging_steps", "save_strategy",
        "save_steps", "save_total_limit", "eval_steps", "dataloader_num_workers",
    ),
}  # fmt: skip
TUNED_TRL_FIELDS["DPOConfig"] = (*TUNED_TRL_FIELDS["SFTConfig"], "beta", "loss_type", "loss_weights", "label_smoothing",
                                 "precompute_ref_log_probs", "precompute_ref_batch_size")  # fmt: skip

# Run in a child process: importing TRL imports torch, which composing a config (and the CLI's early errors) must not.
_READ_TRL_DEFAULTS = """
import dataclasses, json, sys
import trl
out = {}
for config_name, names in json.loads(sys.argv[1]).items():
    fields = {f.name: f for f in dataclasses.fields(getattr(trl, config_name))}
    values = {n: fields[n].default_factory() if fields[n].default_factory is not dataclasses.MISSING else fields[n].default
              for n in names}
    out[config_name] = {n: getattr(v, "value", v) for n, v in values.items()}  # enums by their names
with open(sys.argv[2], "w", encoding="utf-8") as handle:
    json.dump(out, handle)
"""


@cache
def trl_defaults() -> dict[str, dict[str, Any]]:
    """TRL's own defaults of `TUNED_TRL_FIELDS`, read once per installed TRL/transformers version and kept under
    the cache root, so that TRL stays their only source and a TRL upgrade that changes one is picked up."""
    versions = "-".join(f"{name}{metadata.version(name)}" for name in ("trl", "transformers"))
    path = cache_root() / "trl_defaults" / f"{versions}-{_fields_digest()}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            written = Path(scratch) / "defaults.json"
            proc = subprocess.run([sys.executable, "-c", _READ_TRL_DEFAULTS, json.dumps(TUNED_TRL_FIELDS), str(written)],
                                  capture_output=True, text=True)  # fmt: skip
            if proc.returncode:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise ConfigError(f"could not read TRL's config defaults from the installed trl: {last}")
            os.replace(written, path)
    return json.loads(path.read_text(encoding="utf-8"))


def _fields_digest() -> str:
    return hashlib.sha256(json.dumps(TUNED_TRL_FIELDS, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrainSettings:
    """Our part of `train.*` for every training stage; `trl` holds the TRL fields of the same node."""

    TRL_CONFIG: ClassVar[str] = "SFTConfig"

    global_batch_size: int = _help(64, "Sequences (pairs, for DPO) per optimizer step over all processes. Fixed by the recipe: "
                                       "gradient accumulation = global / (per_device_train_batch_size x world size).")
    deepspeed: str | None = _help(None, "DeepSpeed config: a name under conf/deepspeed (zero2, zero3, zero3_offload) or a "
                                        "JSON path; null for none. Works under `accelerate launch`, torchrun and srun.")
    resume: str = _help("auto", "auto: continue from the last checkpoint in out_dir if there is one; never: start over; "
                                "or a checkpoint folder path.")
    merge_adapter: bool = _help(True, "LoRA/QLoRA: also save the adapter merged into the base weights as out_dir/model "
                                      "(the folder the next stage loads). The adapter alone is always saved in out_dir/adapter.")
    eval_size: int = _help(0, "Rows held out from the training data for evaluation during training (0: none). With rows "
                              "held out, TRL's eval_strategy defaults to steps when eval_steps is set, else epoch.")
    trl: dict[str, Any] = field(default_factory=dict, metadata={"help": "The other train.* keys: fields of TRL's "
                                "SFTConfig/DPOConfig by their own names, passed through as they are."})  # fmt: skip

    def __post_init__(self) -> None:
        known = _trl_fields(self.TRL_CONFIG)
        unknown = sorted(set(self.trl) - set(known))
        if unknown:
            ours = sorted(f.name for f in dataclasses.fields(self) if f.name != "trl")
            raise ConfigError(f"unknown key(s) {', '.join(f'train.{k}' for k in unknown)}: neither ours ({', '.join(ours)}) "
                              f"nor a field of TRL's {self.TRL_CONFIG} (see its documentation for the names)")  # fmt: skip
        derived = sorted(set(self.trl) & set(DERIVED))
        if derived:
            raise ConfigError("; ".join(f"train.{k} is set from {DERIVED[k]}: remove it" for k in derived))
        if int(self.global_batch_size) < 1 or self.per_device_batch_size < 1:
            raise ConfigError(f"train.global_batch_size and train.per_device_train_batch_size must be >= 1, got "
                              f"{self.global_batch_size} and {self.per_device_batch_size}")  # fmt: skip
        if self.global_batch_size % self.per_device_batch_size:
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                f"train.per_device_train_batch_size={self.per_device_batch_size}: pick a per-device batch that divides it"
            )
        self._check_what_transformers_accepts_silently()
        if self.resume not in RESUME_MODES and not Path(self.resume).is_dir():
            raise ConfigError(f"train.resume must be auto, never or an existing checkpoint folder, got '{self.resume}'")
        if self.eval_size < 0:
            raise ConfigError(f"train.eval_size must be >= 0, got {self.eval_size}")
        if not self.eval_size and self.trl.get("eval_strategy", "no") != "no":
            raise ConfigError(f"train.eval_strategy={self.trl['eval_strategy']} evaluates on rows held out from the "
                              "training data: set train.eval_size to how many")  # fmt: skip
        if self.deepspeed:
            self.deepspeed = str(deepspeed_config_path(self.deepspeed))

    def _check_what_transformers_accepts_silently(self) -> None:
        """Values transformers takes without a word but would train wrongly with (it rejects the rest itself)."""
        max_steps = self._trl_value("max_steps")
        if max_steps == 0 or max_steps < -1:
            raise ConfigError(f"train.max_steps must be a positive step count or -1 (use num_train_epochs), got {max_steps}")
        warmup = self._trl_value("warmup_steps")
        if warmup >= 1 and warmup != int(warmup):  # transformers would cut 1.5 to 1 step
            raise ConfigError(f"train.warmup_steps={warmup}: give whole steps (>= 1) or a share of all steps (< 1)")
        if warmup >= 1:
            self.trl["warmup_steps"] = int(warmup)

    def _trl_value(self, name: str) -> Any:
        """A tuned TRL field as TRL will see it: set in train.*, else TRL's default."""
        return self.trl[name] if name in self.trl else trl_defaults()[self.TRL_CONFIG][name]

    @property
    def per_device_batch_size(self) -> int:
        return int(self._trl_value("per_device_train_batch_size"))

    def gradient_accumulation(self, world_size: int) -> int:
        """Accumulation steps that keep the global batch fixed on `world_size` processes."""
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} cannot be split over {world_size} process(es) x "
                f"per_device_train_batch_size={self.per_device_batch_size}: choose a per-device batch size or a number "
                "of processes whose product divides the global batch"
            )
        return self.global_batch_size // per_step

    def trainer_kwargs(self, out_dir: Path, world_size: int, seed: int, report_to: str) -> dict[str, Any]:
        """Arguments for TRL's config: the TRL fields of train.* and what we derive (`DERIVED`, DeepSpeed, eval)."""
        import torch

        kwargs = dict(self.trl)
        kwargs.setdefault("per_device_eval_batch_size", self.per_device_batch_size)
        if self.eval_size:  # rows held out: evaluate on them (TRL's default, "no", would not)
            kwargs.setdefault("eval_strategy", "steps" if kwargs.get("eval_steps") else "epoch")
        return dict(
            kwargs,
            output_dir=str(out_dir),
            gradient_accumulation_steps=self.gradient_accumulation(world_size),
            deepspeed=self.deepspeed,
            seed=seed,
            data_seed=seed,
            report_to=report_to,
            use_cpu=not torch.cuda.is_available(),
        )

    def trl_config(self, kwargs: dict[str, Any]) -> Any:
        """TRL's `SFTConfig`/`DPOConfig` from `trainer_kwargs` (+ model settings); its own errors, named as ours."""
        import trl

        try:
            return getattr(trl, self.TRL_CONFIG)(**kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"train: TRL's {self.TRL_CONFIG} refuses these settings: {err}") from None


@dataclass
class SFTSettings(TrainSettings):
    """SFT (`train sft`) and reversed instruction tuning (`train reverse`): TRL's SFTConfig, loss on the response only."""


@dataclass
class DPOSettings(TrainSettings):
    """DPO (`train dpo`): TRL's DPOConfig; the policy starts from the SFT model, which is also the reference."""

    TRL_CONFIG: ClassVar[str] = "DPOConfig"

    ref_logps_cache: bool = _help(True, "Keep the tokenized pairs, and with them the reference log-probs TRL precomputes "
                                        "(train.precompute_ref_log_probs=true), in a lasting folder keyed by (reference "
                                        "model, data, tokenization): later runs (a beta/lr sweep) reuse them.")
    ref_logps_dir: str | None = _help(None, "Folder of those lasting entries (null: <cache root>/ref_logps).")

    def __post_init__(self) -> None:
        super().__post_init__()
        loss_types = self._trl_value("loss_type")
        loss_types = [loss_types] if isinstance(loss_types, str) else list(loss_types)
        unknown = [name for name in loss_types if name not in documented_loss_types()]
        if unknown and documented_loss_types():  # TRL itself would only say so at the first training step
            raise ConfigError(f"train.loss_type {unknown} unknown: choose from {', '.join(documented_loss_types())}")
        if self.beta <= 0:
            raise ConfigError(f"train.beta must be > 0, got {self.beta}")
        if self.ref_logps_cache and not self.precompute_ref_log_probs:
            raise ConfigError("train.ref_logps_cache=true needs train.precompute_ref_log_probs=true "
                              "(or set ref_logps_cache=false)")  # fmt: skip

    @property
    def precompute_ref_log_probs(self) -> bool:
        return bool(self._trl_value("precompute_ref_log_probs"))

    @property
    def beta(self) -> float:
        return float(self._trl_value("beta"))


SCHEMA_NAMES = {"SFTConfig": "schema_sft", "DPOConfig": "schema_dpo"}


def schema_node(settings_cls: type[TrainSettings]) -> dict[str, Any]:
    """`train/schema_<stage>`: our fields at their defaults, then the TRL fields the presets tune at TRL's."""
    ours = {f.name: f.default for f in dataclasses.fields(settings_cls) if f.name != "trl"}
    return {**ours, **trl_defaults()[settings_cls.TRL_CONFIG]}


def register_train_schema() -> None:
    """Give Hydra `train/schema_sft` and `train/schema_dpo`, every conf/train preset's first default."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for settings_cls in (SFTSettings, DPOSettings):
        store.store(group="train", name=SCHEMA_NAMES[settings_cls.TRL_CONFIG], node=schema_node(settings_cls))


register_train_schema()


@cache
def documented_loss_types() -> tuple[str, ...]:
    """The loss types TRL's DPOConfig documents (its `loss_type` help), so that a typo stops before any model loads."""
    return tuple(re.findall(r"`'(\w+)'`", _trl_fields("DPOConfig")["loss_type"].metadata.get("help", "")))


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
    """Build a settings dataclass from a config node. Training settings pass the keys that are not theirs to TRL
    (`trl`, checked against TRL's field names); other settings name unknown keys instead of ignoring them."""
    names = {f.name for f in dataclasses.fields(cls)}
    if "trl" in names:
        values = plain(node)
        values = {**{k: v for k, v in values.items() if k in names and k != "trl"},
                  "trl": {k: v for k, v in values.items() if k not in names}}  # fmt: skip
    else:
        values = node_values(node, cls, key)
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
