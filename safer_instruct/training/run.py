"""The training stages as library functions: `run_sft`, `run_dpo`, `run_reverse` (cfg, out_dir).

The entry scripts in `train/` only call these. Each stage:

1. reads and checks its settings (`train.*`, `peft.*`, `model.*`, `data.*`) before loading a model;
2. loads the data through `safer_instruct.data.sources` (rows matching an evaluation prompt of
   `leakage.sets` removed, `data.sample_size` rows drawn) and tokenizes it with the model's one prompt
   format (`PromptFormat`), truncating prompts to `model.max_prompt_length`; `data_stats.json` records
   rows read, rows used and rows removed per reason (`test_prompt_overlap` among them), per category,
   the draw, the Hub revisions read and the tokenization;
3. trains with TRL (SFTTrainer / DPOTrainer over our token ids; `train.*` passed to its config), resuming from the last checkpoint in
   `out_dir` when there is one, logging to wandb (if on) and always to `metrics.jsonl`;
4. saves the final model (`out_dir/model`, plus `out_dir/adapter` for LoRA/QLoRA),
   `trl_config.json` (every field of the TRL config it trained with, TRL's defaults included) and
   `train_summary.json`, whose `data` block says what the stage trained on: `pairs` (rows trained on),
   `tokens` (tokens of the training sequences; DPO: prompt+chosen and prompt+rejected),
   `optimizer_steps` (taken) and `optimizer_steps_planned`, `sample` (the draw) and `revisions`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from safer_instruct.config import is_main_process
from safer_instruct.data.leakage import LeakageSettings
from safer_instruct.errors import ConfigError
from safer_instruct.io import atomic_write_json
from safer_instruct.training.settings import DPOSettings, PeftSettings, SFTSettings, settings_from, world_size

log = logging.getLogger(__name__)


@dataclass
class StagePlan:
    """Everything decided before a model is loaded."""

    name: str
    train: Any
    peft: PeftSettings
    start: Any
    tokenizer: Any
    guard: Any = None  # safer_instruct.data.leakage.LeakageGuard
    data_stats: dict[str, Any] = field(default_factory=dict)


def _plan(cfg: DictConfig, name: str, settings_cls: type) -> StagePlan:
    from safer_instruct.training.models import starting_point, torch_dtype

    train = settings_from(settings_cls, cfg.train, "train")
    peft = settings_from(PeftSettings, cfg.get("peft") or {}, "peft")
    torch_dtype(cfg.model.dtype)  # validates the name
    if train.deepspeed and peft.method == "qlora":
        raise ConfigError("QLoRA (peft=qlora) does not run under DeepSpeed here: use peft=lora or train.deepspeed=null")
    from safer_instruct.training.distributed import deepspeed_process_group

    deepspeed_process_group(bool(train.deepspeed))
    # Before any model loads: a paper preset without its evaluation prompt sets stops here.
    guard = LeakageSettings.from_config(cfg.get("leakage")).guard()
    start = starting_point(cfg.model.path, cfg.model.get("revision"))
    return StagePlan(name=name, train=train, peft=peft, start=start, tokenizer=start.load_tokenizer(), guard=guard)


def _data_stats(load_stats: Any, guard: Any, train_rows: int, eval_rows: int, tokens: int,
                tokenization: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """data_stats.json: rows read, used, removed per reason (rows_read = rows_used + sum(removed) when each
    row read is one example: not for mixtures, nor ShareGPT's several exchanges per conversation), then the
    details (load, per category, the draw, leakage guard, revisions, tokens)."""
    removed = dict(load_stats.dropped)
    if eval_rows:
        removed["eval_split"] = eval_rows
    return {
        "rows_read": load_stats.rows_read,
        "rows_used": train_rows,
        "removed": removed,
        "categories": load_stats.categories,
        "sample": load_stats.sample,
        "leakage": guard.to_dict() if guard is not None else None,
        "revisions": load_stats.revisions(),
        "tokens": tokens,
        "load": load_stats.to_dict(),
        "tokenization": tokenization,
        "eval_rows": eval_rows,
    }


def _write_row_ids(out_dir: Path, train_rows: list, eval_rows: list) -> None:
    """train_rows.json: the source_id of every row trained on (and held out for eval), so a run's data
    can be audited and two runs' draws compared."""
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "train_rows.json", {"train": [r.source_id for r in train_rows],
                                                        "eval": [r.source_id for r in eval_rows]})  # fmt: skip


def _token_count(columns: dict[str, list]) -> int:
    """Tokens of the training sequences: SFT input_ids; DPO prompt+chosen and prompt+rejected."""
    if "input_ids" in columns:
        return sum(len(ids) for ids in columns["input_ids"])
    prompts = [len(ids) for ids in columns.get("prompt_ids", [])]
    return sum(2 * p + len(c) + len(r) for p, c, r in zip(prompts, columns["chosen_ids"], columns["rejected_ids"],
                                                          strict=True))  # fmt: skip


def _split_eval(rows: list, size: int, seed: int) -> tuple[list, list]:
    if not size:
        return rows, []
    if size >= len(rows):
        raise ConfigError(f"train.eval_size={size} leaves no training rows (only {len(rows)} rows): lower it")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:size])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _dataset(columns: dict[str, list]):
    from datasets import Dataset

    return Dataset.from_dict(columns)


def _resume_checkpoint(mode: str, out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if mode == "never":
        return None
    if mode != "auto":
        return mode
    last = get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    return last


def _common_trainer_args(plan: StagePlan, cfg: DictConfig, out_dir: Path, report_to: str) -> dict[str, Any]:
    from safer_instruct.training.models import torch_dtype

    kwargs = plan.train.trainer_kwargs(out_dir, world_size(), int(cfg.seed), report_to)
    kwargs["max_length"] = int(cfg.model.max_length)
    kwargs["model_init_kwargs"] = {"dtype": torch_dtype(cfg.model.dtype)}
    if plan.start.revision and not plan.start.adapter:
        kwargs["model_init_kwargs"]["revision"] = plan.start.revision
    kwargs["run_name"] = f"{plan.name}/{out_dir.name}"
    if plan.peft.method == "qlora":
        kwargs["model_init_kwargs"]["dtype"] = torch_dtype(plan.peft.compute_dtype)
    return kwargs


def _train_and_save(plan: StagePlan, trainer: Any, cfg: DictConfig, out_dir: Path, tracking: Any,
                    data_stats: dict[str, Any], extra: dict[str, Any] | None = None,
                    extra_files: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    from safer_instruct.training.models import save_final
    from safer_instruct.training.trainers import read_metrics

    if is_main_process():
        atomic_write_json(out_dir / "data_stats.json", data_stats)
        # Every effective TRL value (presets set only what they change; TRL's to_dict masks *_token fields).
        atomic_write_json(out_dir / "trl_config.json", trainer.args.to_dict())
    checkpoint = _resume_checkpoint(plan.train.resume, out_dir)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    elapsed = time.perf_counter() - started
    paths = save_final(trainer, plan.tokenizer, out_dir, peft_enabled=plan.peft.enabled, merge=plan.train.merge_adapter,
                       base=plan.start, dtype=cfg.model.dtype, extra_files=extra_files)  # fmt: skip
    metrics = read_metrics(out_dir / "metrics.jsonl")
    train_rows = [m for m in metrics if "loss" in m]
    model_config = getattr(trainer.model, "config", None)
    summary = {
        "stage": plan.name,
        "model": paths["model"],
        "adapter": paths["adapter"],
        "started_from": {"model": plan.start.location, "adapter": plan.start.adapter,
                         "revision": {"requested": plan.start.revision,
                                      "resolved": getattr(model_config, "_commit_hash", None)}},  # fmt: skip
        "resumed_from": checkpoint,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_loss": train_rows[0]["loss"] if train_rows else None,
        "last_logged": metrics[-1] if metrics else None,
        "train_seconds": round(elapsed, 2),
        "world_size": world_size(),
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "global_batch_size": plan.train.global_batch_size,
        # ZeRO-3 shards parameters: ds_numel is the full size
        "trainable_parameters": sum(getattr(p, "ds_numel", p.numel()) for p in trainer.model.parameters() if p.requires_grad),
        "data": {
            "pairs": len(trainer.train_dataset),
            "train_rows": len(trainer.train_dataset),
            "tokens": data_stats.get("tokens"),
            "optimizer_steps": trainer.state.global_step,
            "optimizer_steps_planned": trainer.state.max_steps,
            "sample": data_stats.get("sample"),
            "revisions": data_stats.get("revisions"),
            **data_stats.get("tokenization", {}),
        },
        **(extra or {}),
    }
    if is_main_process():
        atomic_write_json(out_dir / "train_summary.json", summary)
    tracking.summary({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
    log.info("%s done: %d steps, final model in %s", plan.name, trainer.state.global_step, paths["model"] or paths["adapter"])
    return summary


def _sequence_stage(cfg: DictConfig, out_dir: Path, name: str, build_columns,
                    extra_files: dict[str, str] | None = None, callbacks: Sequence[Any] = ()) -> dict[str, Any]:  # fmt: skip
    """SFT and reversed instruction tuning: (prompt, completion) sequences, loss on the completion."""
    from trl import SFTTrainer

    from safer_instruct.data.sources import load_sft_examples
    from safer_instruct.tracking import tracking_run
    from safer_instruct.training.models import policy_for_trainer
    from safer_instruct.training.preprocess import Encoder
    from safer_instruct.training.trainers import MetricsJsonlCallback

    plan = _plan(cfg, name, SFTSettings)
    examples, load_stats = load_sft_examples(cfg.data, plan.guard)
    train_rows, eval_rows = _split_eval(examples, plan.train.eval_size, int(cfg.seed))
    encoder = Encoder(plan.tokenizer, int(cfg.model.max_length), int(cfg.model.max_prompt_length))
    train_columns = build_columns(encoder, plan.tokenizer, train_rows)
    train_dataset = _dataset(train_columns)
    encoder.log_summary(f"{name} train data")
    eval_dataset = _dataset(build_columns(encoder, plan.tokenizer, eval_rows)) if eval_rows else None
    data_stats = _data_stats(load_stats, plan.guard, len(train_rows), len(eval_rows), _token_count(train_columns),
                             encoder.stats.to_dict())  # fmt: skip
    _write_row_ids(out_dir, train_rows, eval_rows)
    with tracking_run(cfg, name, out_dir) as tracking:
        args = plan.train.trl_config({**_common_trainer_args(plan, cfg, out_dir, tracking.report_to),
                                      "completion_only_loss": True})  # fmt: skip
        trainer = SFTTrainer(
            model=policy_for_trainer(plan.start, cfg.model.dtype, plan.peft.method == "qlora"),
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=plan.tokenizer,
            peft_config=plan.peft.lora_config(),
            quantization_config=plan.peft.quantization_config(),
            callbacks=[MetricsJsonlCallback(out_dir / "metrics.jsonl"), *callbacks],
        )
        return _train_and_save(plan, trainer, cfg, out_dir, tracking, data_stats, extra_files=extra_files)


def run_sft(cfg: DictConfig, out_dir: Path, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Supervised fine-tuning on instructions or on the chosen responses of preference data.

    `callbacks`: extra transformers `TrainerCallback`s (tests use them to watch the parameters).
    """
    from safer_instruct.formatting import PromptFormat
    from safer_instruct.training.preprocess import sft_columns

    def build(encoder, tokenizer, rows):
        return sft_columns(encoder, PromptFormat.for_model(cfg.model, tokenizer), rows)

    return _sequence_stage(cfg, out_dir, "train_sft", build, callbacks=callbacks)


def run_reverse(cfg: DictConfig, out_dir: Path, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Reversed instruction tuning: learn P(instruction | response) with the versioned reverse template."""
    from safer_instruct.formatting import REVERSE_PROMPT_CARD, reverse_prompt_card, reverse_template
    from safer_instruct.training.preprocess import reverse_columns

    try:
        template = reverse_template(cfg.get("reverse_prompt") or None)
    except ConfigError as err:
        raise ConfigError(f"reverse_prompt: {err}") from None
    log.info("reverse template %s", template.tag)

    def build(encoder, tokenizer, rows):
        return reverse_columns(encoder, template, rows)

    # The reversed model carries the template and the prompt budget it was trained with: `construct`
    # prompts it with the same template, its corpus texts cut to the same budget.
    card = reverse_prompt_card(template, int(cfg.model.max_prompt_length), int(cfg.model.max_length))
    extra_files = {REVERSE_PROMPT_CARD: _json(card)}
    return _sequence_stage(cfg, out_dir, "train_reverse", build, extra_files, callbacks)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2) + "\n"


def run_dpo(cfg: DictConfig, out_dir: Path, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """DPO from the SFT model (also the reference), with TRL's reference log-probs kept for later runs."""
    import trl
    from transformers import set_seed

    from safer_instruct.data.sources import load_preferences
    from safer_instruct.formatting import PromptFormat
    from safer_instruct.identity import is_content_identity, model_identity
    from safer_instruct.tracking import tracking_run
    from safer_instruct.training.models import merged_model, policy_for_trainer
    from safer_instruct.training.preprocess import Encoder, dpo_columns, fingerprint_columns
    from safer_instruct.training.ref_logps import ReferenceCache
    from safer_instruct.training.trainers import MetricsJsonlCallback, PretokenizedDPOTrainer

    plan = _plan(cfg, "train_dpo", DPOSettings)
    train: DPOSettings = plan.train
    # Rows without a rejected response are dropped (no_rejected) before data.sample_size pairs are drawn.
    pairs, load_stats = load_preferences(cfg.data, plan.guard, pairs_only=True)
    train_rows, eval_rows = _split_eval(pairs, train.eval_size, int(cfg.seed))
    fmt = PromptFormat.for_model(cfg.model, plan.tokenizer)
    encoder = Encoder(plan.tokenizer, int(cfg.model.max_length), int(cfg.model.max_prompt_length))
    columns = {"train": dpo_columns(encoder, fmt, train_rows)}
    encoder.log_summary("dpo train data")
    if eval_rows:
        columns["eval"] = dpo_columns(encoder, fmt, eval_rows)
    fingerprints = {split: fingerprint_columns(split_columns) for split, split_columns in columns.items()}
    data_stats = {**_data_stats(load_stats, plan.guard, len(train_rows), len(eval_rows), _token_count(columns["train"]),
                                encoder.stats.to_dict()), "fingerprints": fingerprints}  # fmt: skip
    _write_row_ids(out_dir, train_rows, eval_rows)
    cache = ReferenceCache.at(train.ref_logps_dir) if train.ref_logps_cache else None
    references = [model_identity(loc) for loc in plan.start.identity_locations()]
    for location, identity in zip(plan.start.identity_locations(), references, strict=True):
        if cache and not is_content_identity(identity):
            log.warning("reference model %s is not a local folder: its stored log-probs are keyed by its name only", location)
    key_parts = {
        "reference": references,
        "revision": plan.start.revision,  # a hub id's files at another commit are another reference
        "dtype": str(cfg.model.dtype),
        "quantization": plan.peft.identity(),
        "bf16": train.trl.get("bf16"),
        "prompt_format": {"style": fmt.style, "system_prompt": fmt.system_prompt},
        "tokenization": encoder.settings(),
        "ld_alpha": train.trl.get("ld_alpha"),
        "trl": ".".join(trl.__version__.split(".")[:2]),
    }
    with tracking_run(cfg, "train_dpo", out_dir) as tracking:
        args = train.trl_config(_common_trainer_args(plan, cfg, out_dir, tracking.report_to))
        datasets, keys, cached_before = {}, {}, {}
        with args.main_process_first(local=False, desc="tokenized pairs"):
            for split, split_columns in columns.items():
                if cache is None:
                    datasets[split] = _dataset(split_columns)
                    continue
                datasets[split], keys[split] = cache.dataset(split_columns, key_parts)
                cached_before[split] = cache.reference_files(keys[split])
        ref_model = None
        if plan.start.adapter and not train.precompute_ref_log_probs and not plan.peft.enabled:
            # TRL would rebuild a live reference from the base path alone: give it the merged SFT model instead.
            ref_model = merged_model(plan.start.location, plan.start.adapter, cfg.model.dtype).eval()
        policy = policy_for_trainer(plan.start, cfg.model.dtype, plan.peft.method == "qlora")
        # LoRA adapters start alike in every run of a sweep: TRL's cache key hashes the policy's weights, adapters included.
        set_seed(int(cfg.seed))
        trainer = PretokenizedDPOTrainer(
            model=policy,
            ref_model=ref_model,
            args=args,
            train_dataset=datasets["train"],
            eval_dataset=datasets.get("eval"),
            processing_class=plan.tokenizer,
            peft_config=plan.peft.lora_config(),
            quantization_config=plan.peft.quantization_config(),
            callbacks=[MetricsJsonlCallback(out_dir / "metrics.jsonl"), *callbacks],
        )
        events = []
        if train.precompute_ref_log_probs:
            prepared = {"train": trainer.train_dataset, "eval": trainer.eval_dataset}
            for split in columns:
                events.append(_reference_event(cache, keys.get(split), split, prepared[split], cached_before.get(split)))
                if cache is not None and is_main_process():
                    cache.record(keys[split], {**key_parts, "dataset": fingerprints[split], "split": split,
                                               "rows": len(prepared[split])})  # fmt: skip
        ref_info = {"ref_logps": {"precomputed": train.precompute_ref_log_probs, "events": events,
                                  "forward_batches": trainer.ref_forward_batches,
                                  "pass_seconds": round(trainer.ref_pass_seconds, 3),
                                  "store": str(cache.root) if cache else None}}  # fmt: skip
        return _train_and_save(plan, trainer, cfg, out_dir, tracking, data_stats, extra={**ref_info, "beta": train.beta})


def _reference_event(cache: Any, key: str | None, split: str, dataset: Any, cached_before: set[str] | None) -> dict:
    """How a split got its reference log-probs: reused from the entry, computed (and kept there), or computed."""
    used = [Path(f["filename"]) for f in dataset.cache_files if Path(f["filename"]).name.startswith("cache-")]
    file = str(used[0]) if used else None
    if cache is None:
        status = "computed"
    else:
        status = "reused" if used and used[0].name in (cached_before or set()) else "computed_and_stored"
    return {"dataset": split, "key": key, "status": status, "rows": len(dataset), "file": file}
