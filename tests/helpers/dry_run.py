"""Shared by the dry-run tests: the test key variable and costs recomputed from the price table."""

from __future__ import annotations

import yaml

from safer_instruct.paths import CONF_DIR

KEY_ENV = "SAFER_INSTRUCT_DRY_RUN_TEST_KEY"


def listed_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """USD for these tokens at the list price of `model` in conf/llm/prices.yaml (computed here, not by the code under test)."""
    price = yaml.safe_load((CONF_DIR / "llm" / "prices.yaml").read_text())["models"][model]
    return (prompt_tokens * price["input_per_mtok"] + completion_tokens * price["output_per_mtok"]) / 1e6
