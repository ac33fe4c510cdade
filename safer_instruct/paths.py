"""Where things live: the config tree, the entry scripts, and the caches of built models."""

from __future__ import annotations

import os
from pathlib import Path

from safer_instruct.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


def conf_dir() -> Path:
    """The Hydra config tree. It lives beside the package, so the package is installed editable."""
    if not CONF_DIR.is_dir():
        raise ConfigError(
            f"config tree not found at {CONF_DIR}: install safer-instruct from a checkout with "
            "`pip install -e .` so that conf/, train/ and eval/ stay beside the package"
        )
    return CONF_DIR


def cache_root() -> Path:
    """Root of our own caches (built models, converted checkpoints, reference log-probs).

    `SAFER_INSTRUCT_CACHE` moves it, e.g. to shared storage on a cluster or a temp dir in tests.
    """
    root = os.environ.get("SAFER_INSTRUCT_CACHE") or Path.home() / ".cache" / "safer-instruct"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
