"""The table of paper settings (conf/experiment/PAPER.md) is what the paper presets resolve to.

Every row of the table that names a step and a config key is checked against the config that step's
job would run with (`safer-instruct run experiment=paper_* launcher=slurm`, composed as its dry run
does): `ours` must be the resolved value, and a row marked `known` must hold the paper's value,
unless it says that we differ and why.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from safer_instruct.config import compose
from safer_instruct.paths import CONF_DIR
from safer_instruct.pipeline.plan import build_plan, step_config

TABLE = CONF_DIR / "experiment" / "PAPER.md"
PAPER_ROWS = ("paper_alpaca", "paper_hh_rlhf", "paper_pku_saferlhf", "paper_release", "paper_safer_instruct")
# Paths the constructed row needs before it composes (placeholders: nothing is read).
ROW_OVERRIDES = {"paper_safer_instruct": ["paper.sharegpt_path=/data/sharegpt.json", "paper.corpus_path=/data/texts.jsonl"]}
COLUMNS = ("setting", "step", "key", "ours", "paper", "status", "source")


def _cell_value(text: str):
    """A table cell's value: the YAML inside backticks (`5.0e-7`, `[sigmoid]`, `null`), else the text."""
    match = re.fullmatch(r"`([^`]*)`", text.strip())
    if not match:
        return text.strip()
    value = yaml.safe_load(match.group(1))
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 5e-7 as text
        except ValueError:
            return value
    return value


def table_rows() -> list[dict[str, str]]:
    rows, header = [], None
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            header = None
        elif header is None:
            header = tuple(c.lower() for c in cells)
        elif header == COLUMNS and not set(line) <= set("|-: "):
            rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


@cache
def _step_configs(experiment: str) -> dict:
    cfg = compose("run", [f"experiment={experiment}", "launcher=slurm", "dry_run=true", *ROW_OVERRIDES.get(experiment, [])])
    plan = build_plan(cfg, Path("/tmp/paper-settings") / experiment)
    return {name: step_config(plan, name) for name in plan.steps}


def _targets(step: str) -> list[tuple[str, str]]:
    """(experiment, step) pairs a row's `step` cell names: `dpo` (every paper row that has it) or `paper_x:dpo`."""
    experiment, _, name = step.rpartition(":")
    experiments = [experiment] if experiment else PAPER_ROWS
    return [(e, name) for e in experiments if name in _step_configs(e)]


CHECKED = [row for row in table_rows() if row["key"] not in ("", "—", "-")]


def test_the_table_exists_and_checks_every_stage_of_the_method():
    steps = {row["step"].rpartition(":")[2] for row in CHECKED}
    assert {"reverse", "construct", "sft", "dpo", "harmless", "downstream"} <= steps
    statuses = {re.match(r"\w+", row["status"]).group() for row in table_rows()}
    assert statuses <= {"known", "inferred", "unknown", "ours"}, statuses


@pytest.mark.parametrize("row", CHECKED, ids=[f"{r['step']}:{r['key'].strip('`')}" for r in CHECKED])
def test_each_row_is_what_the_paper_presets_resolve_to(row):
    targets = _targets(row["step"].strip("`"))
    assert targets, f"no paper preset has a step {row['step']}"
    expected = _cell_value(row["ours"])
    for experiment, step in targets:
        key = row["key"].strip("`")
        resolved = OmegaConf.select(_step_configs(experiment)[step], key, default="<absent>")
        if OmegaConf.is_config(resolved):
            resolved = OmegaConf.to_container(resolved, resolve=True)
        assert resolved == expected, f"{experiment}:{step} {key} resolves to {resolved!r}, the table says {expected!r}"
    if row["status"].startswith("known") and "differ" not in row["status"]:
        assert _cell_value(row["paper"]) == expected, f"{row['setting']}: a known setting must be the paper's value"
