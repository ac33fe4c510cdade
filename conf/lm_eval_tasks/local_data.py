"""Data loader for the local (offline) lm-eval tasks in this folder.

lm-eval resolves `!function local_data.load_jsonl` relative to the task YAML, so these tasks work from
any working directory and with the lm-eval CLI too (`lm_eval --include_path conf/lm_eval_tasks ...`).
"""

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_jsonl(data_file: str, split: str = "test", **_metadata) -> datasets.DatasetDict:
    """A one-split DatasetDict from a JSONL file of this folder (no hub, no datasets cache)."""
    path = HERE / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
