"""The expert's pass/fail checks with a verdict prefill: asked prefilled, same decisions, recorded."""

from __future__ import annotations

import json

from safer_instruct.config import compose
from safer_instruct.construct.pipeline import run_construct
from tests.construct.scripted import VERDICT_PREFILL, ScriptedModels, scripted_overrides, write_corpus
from tests.helpers.servers import FaultServer


def test_expert_checks_are_prefilled_decide_the_same_and_say_so(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    runs = {}
    with FaultServer(responder=ScriptedModels()) as server:
        # kit:tiny has local weights: its chat template is rendered here and the check continued from
        # the prefill. prefill=off sends the same checks as plain chats (the answers in full).
        for name, extra in (("prefilled", []), ("plain", ["expert.prefill=off"])):
            out = tmp_path / name
            before = len(server.stats()["bodies"])
            cfg = compose("construct", [*scripted_overrides(server.base_url, out, corpus, tmp_path / "cache"),
                                        "expert.model=kit:tiny", *extra])  # fmt: skip
            runs[name] = (out, run_construct(cfg, out), server.stats()["bodies"][before:])
    (out, stats, bodies), (plain_out, plain_stats, plain_bodies) = runs["prefilled"], runs["plain"]

    checks = stats["llm"]["filter_instructions"]["requests"] + stats["llm"]["filter_responses"]["requests"]
    prefilled = [b for b in bodies if "prompt" in b and b["prompt"].endswith(VERDICT_PREFILL)]
    assert checks > 10 and len(prefilled) == checks
    assert all(b["prompt"].startswith("<|im_start|>user\n") and "passes only if" in b["prompt"] for b in prefilled)
    responds = [b for b in bodies if "messages" in b]  # writing the chosen response is not a verdict: a chat
    assert len(responds) == stats["llm"]["respond"]["requests"] > 0
    assert not [b for b in plain_bodies if "prompt" in b and b["prompt"].endswith(VERDICT_PREFILL)]

    # The same decisions, drop reasons included (unparseable answers stay unparseable).
    assert stats["phases"] == plain_stats["phases"]
    assert stats["phases"]["filter_instructions"]["dropped"]["unparseable_verdict"] == 1
    assert stats["provenance"]["verdict_prefill"] == VERDICT_PREFILL
    assert plain_stats["provenance"]["verdict_prefill"] is None
    row = json.loads((out / "preference.jsonl").read_text().splitlines()[0])
    assert row["provenance"]["verdict_prefill"] == VERDICT_PREFILL
    assert f"began with `{VERDICT_PREFILL}`" in (out / "README.md").read_text()
    assert "prefilled" not in (plain_out / "README.md").read_text()
