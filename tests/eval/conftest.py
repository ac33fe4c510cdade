"""Shared bits of the evaluation tests: where the real release test set is (tests skip without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from safer_instruct.paths import release_location

ROOT = Path(__file__).resolve().parents[2]
RELEASE_DIR = Path(release_location())
RELEASE_TEST_SET = RELEASE_DIR / "test_set.csv"


@pytest.fixture
def release_test_set() -> Path:
    if not RELEASE_TEST_SET.is_file():
        pytest.skip(f"the release's test_set.csv is not at {RELEASE_TEST_SET} (set SAFER_INSTRUCT_RELEASE)")
    return RELEASE_TEST_SET
