"""Which weights a training stage starts from, and how its final model is saved.

`model.path` may name a kit model, a local folder, a hub id, or the output of an earlier stage:
a full model folder (`<sft out_dir>/model`) or a LoRA adapter folder (`<sft out_dir>/adapter`,
merged into its base on load). The final model of every stage lands in `out_dir/model` (full weights
+ tokenizer, the folder the next stage loads); LoRA/QLoRA runs also keep `out_dir/adapter`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError, ModelNotFoundError
from safer_instruct.model_kit import resolve_model

log = logging.getLogger(__name__)
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class StartingPoint:
    """The weights a stage starts from: a `from_pretrained` location, or a base + an adapter to merge."""

    location: str
    adapter: str | None = None
    revision: str | None = None  # hub models: `model.revision`, passed to from_pretrained(revision=...)

    def load_tokenizer(self) -> Any:
        """The tokenizer saved with the adapter (if any), else the model's; with a pad token."""
        from transformers import AutoTokenizer

        folder = self.adapter if self.adapter and (Path(self.adapter) / "tokenizer_config.json").is_file() else self.location
        tokenizer = AutoTokenizer.from_pretrained(folder, revision=self.revision if folder == self.location else None)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def identity_locations(self) -> list[str]:
        return [self.location] + ([self.adapter] if self.adapter else [])


def starting_point(ref: str, revision: str | None = None) -> StartingPoint:
    """Resolve `model.path` (at `revision` for a hub id); an adapter folder (adapter_config.json, no
    config.json) brings its base."""
    folder = Path(str(ref)).expanduser()
    if folder.is_dir() and (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelNotFoundError(f"adapter {folder} does not name its base model (base_model_name_or_path)")
        return StartingPoint(location=resolve_model(base), adapter=str(folder))
    location = resolve_model(str(ref))
    # A revision only means something for a hub id (a local folder, e.g. "@{sft}/model", has none).
    return StartingPoint(location=location, revision=revision if revision and not Path(location).exists() else None)


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {', '.join(DTYPES)}, got '{name}'")
    return name if name == "auto" else getattr(torch, name)


def policy_for_trainer(start: StartingPoint, dtype: str, quantized: bool) -> Any:
    """What to hand a TRL trainer as `model`: a path (TRL loads it, quantized if asked) or a merged model."""
    if start.adapter is None:
        return start.location
    if quantized:
        raise ConfigError(
            f"QLoRA cannot start from the LoRA adapter {start.adapter}: point model.path at the merged weights "
            "(`<previous out_dir>/model`, written when train.merge_adapter=true)"
        )
    return merged_model(start.location, start.adapter, dtype)


def merged_model(base: str, adapter: str, dtype: str) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    # PEFT loads for inference (frozen base); the merged model is trained like any full model.
    return merged.requires_grad_(True)


def save_final(trainer: Any, tokenizer: Any, out_dir: Path, *, peft_enabled: bool, merge: bool, base: StartingPoint,
               dtype: str, extra_files: dict[str, str] | None = None) -> dict[str, str | None]:  # fmt: skip
    """Save the trained model; for adapters also the merged weights. Returns the paths written."""
    final = out_dir / "model"
    adapter = out_dir / "adapter" if peft_enabled else None
    trainer.save_model(str(adapter or final))  # gathers ZeRO-3 shards; rank 0 writes
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return {"model": str(final), "adapter": str(adapter) if adapter else None}
    tokenizer.save_pretrained(str(adapter or final))
    if adapter is not None and merge:
        # Merge on CPU from the saved adapter, into the unquantized base: valid after LoRA and QLoRA alike.
        base_model = base.location
        if base.adapter:
            base_model = merged_model(base.location, base.adapter, dtype)
        _merge_into(base_model, adapter, dtype, final)
        tokenizer.save_pretrained(str(final))
    for name, text in (extra_files or {}).items():
        for folder in (final, adapter):
            if folder is not None and folder.is_dir():
                (folder / name).write_text(text)
    return {"model": str(final) if final.is_dir() else None, "adapter": str(adapter) if adapter else None}


def _merge_into(base: Any, adapter: Path, dtype: str, target: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = base if not isinstance(base, str) else AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log.info("merged adapter %s into %s", adapter, target)
