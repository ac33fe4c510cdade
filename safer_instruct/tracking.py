"""Experiment tracking with wandb: one run per stage, secrets never logged.

`tracking.mode` in config:

* `auto` (default): honour `WANDB_MODE` if set; otherwise online when a wandb key is available
  (`WANDB_API_KEY` or a `wandb login`), offline when not (runs sync later with `wandb sync`);
* `online` / `offline` / `disabled`: forced. Tests set `WANDB_MODE=disabled`.

The config logged to wandb is the resolved config with secret values removed (`config.to_plain`).
HF trainers started inside a stage log into the stage's run (they reuse `wandb.run`), and the run
is finished when the stage ends, so the next stage gets its own.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from safer_instruct.config import is_main_process, to_plain

log = logging.getLogger(__name__)
MODES = ("auto", "online", "offline", "disabled")


def resolve_mode(requested: str) -> str:
    """The wandb mode a stage will actually use."""
    if requested not in MODES:
        from safer_instruct.errors import ConfigError

        raise ConfigError(f"tracking.mode must be one of {', '.join(MODES)}, got '{requested}'")
    if requested != "auto":
        return requested
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in {"online", "offline", "disabled"}:
        return env_mode
    if env_mode == "dryrun":
        return "offline"
    return "online" if _has_wandb_key() else "offline"


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


@dataclass
class TrackingRun:
    """Handle on a stage's tracking run; a no-op when tracking is disabled."""

    run: Any = None

    @property
    def report_to(self) -> str:
        """The value for `report_to` of HF/TRL trainer configs."""
        return "wandb" if self.run is not None else "none"

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(dict(values))


@contextmanager
def tracking_run(cfg: DictConfig, stage: str, out_dir: str | Path) -> Iterator[TrackingRun]:
    """Open one wandb run for a stage (rank 0 only) and always finish it."""
    settings = cfg.get("tracking") or {}
    mode = resolve_mode(settings.get("mode", "auto"))
    if mode == "disabled" or not is_main_process():
        yield TrackingRun()
        return
    import wandb

    group = settings.get("group") or None
    run = wandb.init(
        project=settings.get("project", "safer-instruct"),
        entity=settings.get("entity") or None,
        group=group,
        job_type=stage,
        name=f"{group}/{stage}" if group else f"{stage}/{Path(out_dir).name}",
        dir=str(out_dir),
        mode=mode,
        config=to_plain(cfg),
        reinit="finish_previous",
    )
    log.info("wandb run %s (%s mode)", run.name, mode)
    try:
        yield TrackingRun(run)
    finally:
        run.finish()
