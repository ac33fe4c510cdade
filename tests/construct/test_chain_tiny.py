"""The whole chain with a REAL model: the tiny kit Llama behind a real `transformers serve` on loopback
(the LLM layer's managed server), as both the inducer and the expert, on the customer-support domain.

A random tiny model writes garbage: its instructions are mostly not language and its verdicts do not
parse. What this run checks is that real answers flow through every phase and that every item is
accounted for: the funnel adds up, nothing parses as a pass by accident, every output file exists.
"""

import json

import pytest

from safer_instruct.config import compose
from safer_instruct.construct.pipeline import run_construct
from tests.helpers.servers import tiny_role_config


@pytest.mark.slow
def test_chain_with_the_tiny_model_served_for_real(tmp_path):
    role = tiny_role_config()
    out = tmp_path / "out"
    overrides = [
        f"out_dir={out}", f"cache.dir={tmp_path / 'cache'}", "tracking.mode=disabled", "domain=customer_support",
        "corpus.limit=6", "induce.samples_per_text=2",
        f"inducer.model={role['model']}", f"inducer.base_url={role['base_url']}", "inducer.max_tokens=12",
        "inducer.temperature=0.9", "inducer.seed=7", "inducer.hf_generation_config=true",
        f"expert.model={role['model']}", f"expert.base_url={role['base_url']}", "expert.max_tokens=12",
        # Let the tiny model's garbage reach the expert, so that real verdicts are asked for and parsed.
        "filter_instructions.heuristics.function_words=[]", "filter_instructions.heuristics.min_letter_ratio=0",
        "filter_instructions.heuristics.min_words=1", "filter_instructions.heuristics.max_paste_ratio=1.0",
        # Its answers mostly run to max_tokens: keep them, flagged, so that every phase gets work.
        *(f"on_truncated.{phase}=flag" for phase in ("induce", "filter_instructions", "respond", "filter_responses")),
    ]  # fmt: skip
    stats = run_construct(compose("construct", overrides), out)
    phases = stats["phases"]
    assert stats["problems"] == []
    assert stats["corpus"]["kept"] == 6 and phases["induce"]["in"] == 12
    assert phases["induce"]["in"] == phases["induce"]["out"] + sum(phases["induce"]["dropped"].values())
    assert stats["llm"]["induce"]["requests"] == 12 and stats["llm"]["induce"]["failures"] == 0
    checked = phases["filter_instructions"]
    asked = checked["in"] - sum(n for reason, n in checked["dropped"].items()
                                if reason in ("duplicate", "near_duplicate", "too_short", "too_long"))  # fmt: skip
    assert asked > 0 and stats["llm"]["filter_instructions"]["requests"] == asked
    # Every verdict of a random model is unreadable: counted as such, never taken as a pass.
    assert checked["dropped"].get("unparseable_verdict", 0) + checked["out"] == asked
    for phase in ("respond", "filter_responses", "assemble"):
        assert phases[phase]["in"] == phases[prev(phase)]["out"]
    rows = [json.loads(line) for line in (out / "preference.jsonl").read_text().splitlines()]
    assert len(rows) == stats["splits"]["train"]
    for name in ("stats.json", "README.md", "funnel.png", "failures.jsonl", "preference_test.jsonl"):
        assert (out / name).is_file()
    assert (out / "datasets" / "dataset_dict.json").is_file()
    induced = [json.loads(line) for line in (out / "phases" / "induce" / "output.jsonl").read_text().splitlines()]
    assert induced and all(row["inducer_model"] for row in induced)  # answers really came from the server
    # A real server's finish_reason: the instructions that ran to inducer.max_tokens are flagged, and
    # the flags are counted.
    flagged = sum("induce" in (row.get("truncated") or []) for row in induced)
    assert flagged == phases["induce"]["truncated_kept"] and phases["induce"]["on_truncated"] == "flag"
    assert all(row["provenance"]["truncated"] == sorted(row["provenance"]["truncated"], key=prev_order)
               for row in rows)  # fmt: skip


def prev_order(phase: str) -> int:
    return ["induce", "filter_instructions", "respond", "filter_responses"].index(phase)


def prev(phase: str) -> str:
    order = ["induce", "filter_instructions", "respond", "filter_responses", "assemble"]
    return order[order.index(phase) - 1]
