"""What the benchmark scripts share: their settings, their two common options and their result rows.

Not a benchmark itself (`run_all.py` runs `bench_*.py` and `gpu_*.py` only). A script imports it
first thing, as `import common` (its own folder is on `sys.path` when it runs as
`python bench/X.py`), and calls `setup_env()` before importing the framework.

Every benchmark writes, with `--out FILE`, a JSON list of rows made by `row()` or `skipped()`:

    {"benchmark": str, "metric": str, "value": float, "target": str, "met": bool | None, "details": {...}}
    {"benchmark": str, "skipped": "reason"}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from safer_instruct.paths import release_location

ROOT = Path(__file__).resolve().parents[1]
# The public release, read in place (never copied into the repository).
RELEASE_DIR = Path(release_location())

ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # no benchmark may reach a hub: it would time the network
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TQDM_DISABLE": "1",  # progress bars off: measure the work, not the terminal
    "TOKENIZERS_PARALLELISM": "false",  # no tokenizer threads competing with torch's on 2 cores
}


def setup_env() -> None:
    """Offline, untracked and quiet unless the caller's environment says otherwise; the repository
    importable (the scripts use `tests.helpers`). Call before importing the framework, torch or HF."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def base_parser(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """The parser of a benchmark script with its `--quick` (`quick` says what it shrinks) and `--out`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{quick}: a smoke check, not a measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the result rows here (a JSON list)")
    return parser


def row(benchmark: str, *, metric: str, value: float, target: str, met: bool | None, details: dict[str, Any]) -> dict:
    """One measured result; `met` is None where the target is "reported (no target)"."""
    return {"benchmark": benchmark, "metric": metric, "value": value, "target": target, "met": met, "details": details}


def skipped(benchmark: str, reason: str) -> dict:
    """The row of a benchmark that cannot run on this machine, and why."""
    return {"benchmark": benchmark, "skipped": reason}


def write_rows(out: Path | None, rows: list[dict]) -> int:
    """Print the rows and write them to `out` when given; returns the script's exit status (0)."""
    text = json.dumps(rows, indent=2)
    print(text, flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0
