"""A lasting place for DPO's tokenized pairs, so that TRL's cache of reference log-probs outlives a run.

DPO needs, for every pair, the log-probability of the chosen and the rejected response under the
reference model (the SFT model). They depend only on the reference weights, the token ids of the
data and a few settings, never on beta or the learning rate. TRL computes them once when
`precompute_ref_log_probs` is on and caches them as an Arrow file beside the dataset's own cache
file, named by the dataset's fingerprint and a hash of the reference weights. A dataset built in
memory has neither a lasting file nor a stable fingerprint, so `ReferenceCache.dataset` writes the
tokenized pairs to `<root>/<key>/pairs.arrow` with the fingerprint `key`, where the key hashes:

* the reference model identity (`safer_instruct.identity.model_identity`: a content hash of its
  weight/config/tokenizer files, cached by file size and mtime, so a 13 GB checkpoint is hashed once), plus how it is loaded (dtype, 4-bit
  quantization for QLoRA, bf16 autocast). TRL's own weight hash is taken after loading, when ZeRO-3
  has already partitioned the weights, so it cannot tell two models of one architecture apart there;
* the dataset fingerprint: a hash of the exact token ids (prompt, chosen, rejected);
* the tokenization and loss settings that change the values (max lengths, BOS, `ld_alpha`).

TRL then writes its `cache-<hash>.arrow` into the same folder, and a run with another beta finds it.
`meta.json` records the SHA-256 of every file of the entry: a file that no longer matches is
reported and deleted before the trainer starts, so TRL computes it anew. TRL and `datasets` write
their files atomically (temporary file + rename), so concurrent runs never read half a file.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safer_instruct.identity import digest, file_digest
from safer_instruct.io import atomic_write_json
from safer_instruct.paths import cache_root

log = logging.getLogger(__name__)
STORE_VERSION = 2  # 2: TRL caches the values beside our pairs.arrow (1: our own logps.npz)


def store_key(parts: dict[str, Any]) -> str:
    """The entry name for a dict of key components."""
    return digest({"v": STORE_VERSION, **parts}, 32)


PAIRS_FILE = "pairs.arrow"


@dataclass
class ReferenceCache:
    """Entries `<root>/<key>/{pairs.arrow, cache-*.arrow (TRL's reference log-probs), meta.json}`."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path | None = None) -> ReferenceCache:
        return cls(Path(folder).expanduser() if folder else cache_root() / "ref_logps")

    def entry(self, key: str) -> Path:
        return self.root / key

    def dataset(self, columns: dict[str, list], key_parts: dict[str, Any]) -> tuple[Any, str]:
        """The pairs as a dataset with a lasting Arrow file in their entry, and the entry's key.

        Call it on one process at a time (`TrainingArguments.main_process_first`): the first one checks
        the entry and writes the file, the others find it.
        """
        from datasets import Dataset

        from safer_instruct.training.preprocess import fingerprint_columns

        key = store_key({**key_parts, "dataset": fingerprint_columns(columns)})
        folder = self.entry(key)
        self._drop_unusable(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dataset = Dataset.from_dict(columns).flatten_indices(cache_file_name=str(folder / PAIRS_FILE), new_fingerprint=key)
        return dataset, key

    def reference_files(self, key: str) -> set[str]:
        """Names of the reference log-prob files TRL has cached in an entry."""
        return {path.name for path in self.entry(key).glob("cache-*.arrow")}

    def record(self, key: str, meta: dict[str, Any]) -> Path:
        """Write the entry's meta.json: `meta` and the checksum of every file (main process only)."""
        folder = self.entry(key)
        files = {path.name: file_digest(path) for path in sorted(folder.glob("*.arrow"))}
        atomic_write_json(folder / "meta.json", {**meta, "key": key, "files": files})
        return folder / "meta.json"

    def _drop_unusable(self, folder: Path) -> None:
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return
        try:
            files = json.loads(meta_path.read_text())["files"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("reference entry %s has an unreadable meta.json (%s): computing it anew", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            return
        for name, recorded in files.items():
            path = folder / name
            if path.is_file() and file_digest(path) != recorded:
                log.warning("%s does not match its checksum: deleted, computing it anew", path)
                if name == PAIRS_FILE:  # the reference files beside it were computed from it
                    shutil.rmtree(folder, ignore_errors=True)
                    return
                path.unlink()
