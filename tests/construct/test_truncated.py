"""Answers cut off at the token limit, in every LLM phase of construct: never kept as if complete.

The scripted models (scripted.py) answer through the real LLM layer from the tests' loopback server;
the server's `[[fault:length]]` directive marks an answer as stopped on the token limit
(finish_reason "length"). Corpus text t13 holds the directive, so every request that shows the text
is cut off (induce, filter_instructions, filter_responses); t14's instructions hold it, so every
request that shows the instruction is (filter_instructions, respond, filter_responses).
"""

import json
from pathlib import Path

import pytest

from safer_instruct.config import compose
from safer_instruct.construct.pipeline import run_construct
from safer_instruct.errors import ConfigError
from safer_instruct.llm import LLMSession
from safer_instruct.llm.types import ChatRequest
from tests.construct.scripted import scripted_overrides, write_truncation_corpus

PHASES = ("induce", "filter_instructions", "respond", "filter_responses")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("truncated")
    return root, write_truncation_corpus(root / "corpus.jsonl")


def construct(server, workspace, name, *extra):
    root, corpus = workspace
    out = root / name
    cfg = compose("construct", [*scripted_overrides(server.base_url, out, corpus, root / "cache"), *extra])
    return out, run_construct(cfg, out)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for name in ("preference.jsonl", "preference_test.jsonl")
            for line in (out / name).read_text(encoding="utf-8").splitlines()]  # fmt: skip


def truncated_drops(stats: dict) -> dict[str, int]:
    return {phase: stats["phases"][phase]["dropped"].get("truncated", 0) for phase in PHASES}


def test_cut_off_answers_are_dropped_and_counted_per_phase_by_default(server, workspace):
    out, stats = construct(server, workspace, "drop")
    assert stats["problems"] == []
    # t13: both induced instructions cut off; t14: both instruction checks cut off. Nothing else is.
    assert truncated_drops(stats) == {"induce": 2, "filter_instructions": 2, "respond": 0, "filter_responses": 0}
    assert stats["phases"]["induce"]["by_category"]["hate"]["dropped"]["truncated"] == 2
    assert all(stats["phases"][phase]["on_truncated"] == "drop" for phase in PHASES)
    assert stats["provenance"]["on_truncated"] == dict.fromkeys(PHASES, "drop")
    final = rows(out)
    assert final and not {"t13", "t14"} & {row["rejected"][1:4] for row in final}
    assert not any("[[fault" in row["prompt"] + row["chosen"] + row["rejected"] for row in final)
    assert all(row["provenance"]["truncated"] == [] for row in final)


def test_each_phase_has_its_own_policy(server, workspace):
    # Kept and flagged in the first two phases: the cut-off answers reach respond and filter_responses,
    # which drop them.
    out, stats = construct(server, workspace, "mixed", "on_truncated.induce=flag", "on_truncated.filter_instructions=flag")
    assert stats["problems"] == []
    assert truncated_drops(stats) == {"induce": 0, "filter_instructions": 0, "respond": 2, "filter_responses": 2}
    assert stats["phases"]["induce"]["truncated_kept"] == 2  # t13
    assert stats["phases"]["filter_instructions"]["truncated_kept"] == 4  # t13 (text) and t14 (instruction)
    assert "truncated_kept" not in stats["phases"]["respond"]
    final = rows(out)
    assert not any("[[fault" in row["prompt"] + row["chosen"] + row["rejected"] for row in final)
    # t14 stopped at respond, t13 at filter_responses: neither is in that phase's output.
    kept = [json.loads(line) for line in (out / "phases" / "filter_responses" / "output.jsonl").read_text().splitlines()]
    assert len(kept) == stats["phases"]["filter_responses"]["out"] > 0
    assert not {"t13", "t14"} & {row["text"][1:4] for row in kept}


def test_flagged_answers_reach_the_rows_provenance(server, workspace):
    flags = [f"on_truncated.{phase}=flag" for phase in PHASES]
    out, stats = construct(server, workspace, "flag", *flags)
    assert truncated_drops(stats) == dict.fromkeys(PHASES, 0)
    assert [stats["phases"][s]["truncated_kept"] for s in PHASES] == [2, 4, 2, 4]
    by_tag = {}
    for row in rows(out):
        by_tag.setdefault(row["rejected"][1:4], set()).add(tuple(row["provenance"]["truncated"]))
    assert by_tag["t13"] == {("induce", "filter_instructions", "filter_responses")}
    assert by_tag["t14"] == {("filter_instructions", "respond", "filter_responses")}
    assert all(flags == {()} for tag, flags in by_tag.items() if tag not in ("t13", "t14"))
    from datasets import load_from_disk

    dataset = load_from_disk(str(out / "datasets"))
    flagged = [r["provenance"]["truncated"] for split in dataset.values() for r in split if r["provenance"]["truncated"]]
    assert len(flagged) == 4 and ["filter_instructions", "respond", "filter_responses"] in flagged


def test_an_unknown_policy_or_phase_is_a_config_error(server, workspace):
    with pytest.raises(ConfigError, match=r"on_truncated.respond='keep'"):
        construct(server, workspace, "bad", "on_truncated.respond=keep")
    with pytest.raises(ConfigError, match="unknown phase"):
        construct(server, workspace, "bad", "+on_truncated.assemble=flag")


def test_anthropic_max_tokens_stop_reason_reads_as_length(server, monkeypatch):
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "k")
    role = server.role(backend="anthropic", model="claude-3-opus-20240229", base_url=server.url,
                       api_key_env="FAKE_ANTHROPIC_KEY")  # fmt: skip
    requests = [ChatRequest(id="cut", messages=({"role": "user", "content": "[[fault:length]] rate this"},)),
                ChatRequest(id="whole", messages=({"role": "user", "content": "rate this"},))]  # fmt: skip
    with LLMSession(roles={"judge": role}) as session:
        results = {r.request_id: r for r in session.role("judge").generate(requests)}
    assert results["cut"].finish_reason == "length" and results["whole"].finish_reason == "end_turn"


def test_an_anthropic_answer_cached_before_normalisation_still_counts_as_cut_off():
    from safer_instruct.llm.types import Completion

    assert Completion("r", "text", "m", finish_reason="max_tokens").cut_off  # Anthropic's raw word
    assert Completion("r", "text", "m", finish_reason="length").cut_off
    assert not Completion("r", "text", "m", finish_reason="stop").cut_off
