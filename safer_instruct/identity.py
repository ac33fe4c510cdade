"""What makes two things the same: one digest of values and one identity of models, for every reuse.

Three mechanisms reuse finished work: the LLM answer cache (`llm/cache.py`), the store of DPO's
reference log-probs (`training/ref_logps.py`) and resume (a step of `run`, a construct phase). Each
keys its entries by `digest(...)` of what determines the result, and a model in any key is
`model_identity(...)`: local weights by the content of their files, so that a model retrained into the
same folder is a new model and the same weights anywhere are one model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from filelock import FileLock

from safer_instruct.io import atomic_write_json
from safer_instruct.paths import cache_root

log = logging.getLogger(__name__)

# Files that make a model what it is: weights, config, tokenizer, chat template.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".gguf", ".pt")


def digest(value: Any, length: int | None = None) -> str:
    """SHA-256 (hex, cut to `length`) of a JSON-able value, independent of key order; anything else
    JSON cannot write is written as its str()."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """Content hash of a model folder's weight, config and tokenizer files (checkpoints and dotfiles
    left out). Each file's hash is remembered by path, size and mtime, so a 13 GB checkpoint is read once."""
    folder = Path(folder).resolve()
    memo_path = cache_root() / "identity" / "file_hashes.json"
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(memo_path) + ".lock"):
        memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
        sha, changed = hashlib.sha256(), False
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES):
            relative = path.relative_to(folder)
            if path.name.startswith(".") or "checkpoint-" in str(relative):
                continue
            stat = path.stat()
            memo_key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
            if memo_key not in memo:
                memo[memo_key], changed = file_digest(path), True
            sha.update(f"{relative}={memo[memo_key]}\n".encode())
        if changed:
            atomic_write_json(memo_path, memo)
    return sha.hexdigest()


def model_identity(model: str) -> str:
    """What every key calls a model: `files:<content hash>` for local weights (a folder, a kit model, a
    Hub id whose snapshot is in the Hugging Face cache), else the name itself (an API model)."""
    path = Path(model).expanduser()
    if model.startswith("kit:"):
        from safer_instruct.model_kit import resolve_model

        path = Path(resolve_model(model))
    if path.is_dir():
        return "files:" + folder_digest(path)
    config = cached_hub_file(model, "config.json") if "/" in model else None
    if config is not None:  # a Hub id that has been downloaded: its snapshot's files
        return "files:" + folder_digest(config.parent)
    return model


def cached_hub_file(model: str, filename: str) -> Path | None:
    """A file of Hub model `model` already in the local Hugging Face cache; None when it is not there or `model`
    is no Hub id (nothing is downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, filename)
    except Exception as err:  # noqa: BLE001 - not a Hub id after all
        log.debug("%s is not in the Hugging Face cache (%s)", model, err)
        return None
    return Path(cached) if isinstance(cached, str) else None


def is_content_identity(identity: str) -> bool:
    """Whether an identity says what the weights are (not only what they are called)."""
    return identity.startswith("files:")
