"""A disk store of reference log-probabilities, so a DPO sweep pays for the reference model once.

DPO needs, for every pair, the log-probability of the chosen and the rejected response under the
reference model (the SFT model). They depend only on the reference weights, the token ids of the
data and a few settings, never on beta or the learning rate. The store keeps them keyed by:

* the reference model identity: a content hash of its weight/config/tokenizer files (cached by file
  size and mtime, so a 13 GB checkpoint is hashed once), plus how it is loaded (dtype, 4-bit
  quantization for QLoRA, bf16 autocast);
* the dataset fingerprint: a hash of the exact token ids (prompt, chosen, rejected);
* the tokenization and loss settings that change the values (max lengths, BOS, `ld_alpha`).

Any change of the key computes anew. Each entry is `logps.npz` plus `meta.json` holding its SHA-256;
a file that does not match its checksum or shape is reported, deleted and recomputed. Writes are
atomic (temporary file + rename), so concurrent runs never read half an entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from safer_instruct.io import atomic_write_json
from safer_instruct.paths import cache_root

log = logging.getLogger(__name__)
STORE_VERSION = 1
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".gguf", ".pt")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files_fingerprint(folder: str | Path) -> str:
    """Content hash of a model folder's weights, config and tokenizer files (memoized by size+mtime)."""
    folder = Path(folder).resolve()
    memo_path = cache_root() / "ref_logps" / "file_hashes.json"
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(memo_path) + ".lock"):
        memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
        digest = hashlib.sha256()
        changed = False
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES):
            if path.name.startswith(".") or "checkpoint-" in str(path.relative_to(folder)):
                continue
            stat = path.stat()
            memo_key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
            if memo_key not in memo:
                memo[memo_key] = _sha256_file(path)
                changed = True
            digest.update(f"{path.relative_to(folder)}={memo[memo_key]}\n".encode())
        if changed:
            atomic_write_json(memo_path, memo)
    return digest.hexdigest()


def model_identity(location: str) -> str:
    """Identity of a model reference: a content hash for local folders (and cached Hub snapshots)."""
    path = Path(location).expanduser()
    if path.is_dir():
        return model_files_fingerprint(path)
    try:  # a Hub id that has been loaded is in the HF cache: hash its snapshot folder
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(location, "config.json")
        if isinstance(config, str):
            return model_files_fingerprint(Path(config).parent)
    except Exception:  # noqa: BLE001 - fall back to the id itself
        pass
    log.warning("reference model %s is not a local folder: keyed by its name only", location)
    return f"name:{location}"


def store_key(parts: dict[str, Any]) -> str:
    """The entry name for a dict of key components."""
    return hashlib.sha256(json.dumps({"v": STORE_VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class RefLogpsStore:
    """Reference log-probs on disk: `<root>/<key>/{logps.npz, meta.json}`."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path | None = None) -> RefLogpsStore:
        return cls(Path(folder).expanduser() if folder else cache_root() / "ref_logps")

    def entry(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The stored (chosen, rejected) log-probs, or None when absent, corrupt or of the wrong size."""
        folder = self.entry(key)
        data_path, meta_path = folder / "logps.npz", folder / "meta.json"
        if not data_path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            blob = data_path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            arrays = np.load(io.BytesIO(blob))
            chosen, rejected = arrays["chosen"], arrays["rejected"]
            if chosen.shape != (rows,) or rejected.shape != (rows,) or meta.get("rows") != rows:
                raise ValueError(f"holds {chosen.shape[0]} rows, the dataset has {rows}")
            if not (np.isfinite(chosen).all() and np.isfinite(rejected).all()):
                raise ValueError("non-finite values")
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            log.warning("reference log-probs in %s are unusable (%s): recomputing them", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return chosen, rejected

    def save(self, key: str, chosen: np.ndarray, rejected: np.ndarray, meta: dict[str, Any]) -> Path:
        """Write an entry atomically: a reader sees the whole entry or none."""
        buffer = io.BytesIO()
        np.savez(buffer, chosen=np.asarray(chosen, dtype=np.float32), rejected=np.asarray(rejected, dtype=np.float32))
        blob = buffer.getvalue()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key}.tmp-"))
        try:
            (tmp / "logps.npz").write_bytes(blob)
            full_meta = {**meta, "rows": int(len(chosen)), "sha256": hashlib.sha256(blob).hexdigest(), "key": key}
            (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
            target = self.entry(key)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.entry(key)
