"""Shared bits of the evaluation tests: where the real release test set is (tests skip without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASE_DIR = Path(os.environ.get("SAFER_INSTRUCT_RELEASE_DIR") or ROOT.parent / "shared" / "data" / "safer-instruct-release")
RELEASE_TEST_SET = RELEASE_DIR / "test_set.csv"


@pytest.fixture
def release_test_set() -> Path:
    if not RELEASE_TEST_SET.is_file():
        pytest.skip(f"the release's test_set.csv is not at {RELEASE_TEST_SET} (set SAFER_INSTRUCT_RELEASE_DIR)")
    return RELEASE_TEST_SET
