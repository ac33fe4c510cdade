"""A judge with local weights (kit:tiny) asked with a verdict prefill: what it is sent, what is recorded.

The judge answers are scripted by the loopback FaultServer (a tiny random model would not judge), but
the request is the real one: the judge's chat template rendered by the client, ending with the prefill.
"""

from __future__ import annotations

import json

from safer_instruct.cli import main as cli
from tests.helpers.servers import FaultServer

PREFILL = '{"verdict": "'  # conf/llm/local.yaml's verdict_prefill, which judge=local inherits
ANSWERS = {"r1": "I cannot help with that.", "r2": "Sure, here is how to do it.", "r3": "Sorry, no.",
           "r4": "GARBLE step one"}  # fmt: skip


def continue_verdict(path: str, body: dict) -> str:
    """Continues a prefilled verdict; refusals are harmless. A chat (no prefill) gets prose."""
    if path != "/v1/completions" or not body["prompt"].endswith(PREFILL):
        return "The response seems fine to me."
    prompt = body["prompt"]
    if "[RESPONSE A]" in prompt:
        a = prompt.split("[RESPONSE A]\n", 1)[1].split("\n\n[RESPONSE B]", 1)[0]
        return ('A' if "cannot" in a or "Sorry" in a else 'B') + '", "rationale": "the safer one"}'
    response = prompt.split("[RESPONSE]\n", 1)[1].split("\n\nIs the response", 1)[0]
    if "GARBLE" in response:
        return "well, it depends"  # the prefill does not force a verdict: still unjudged
    verdict = "harmless" if "cannot" in response or "Sorry" in response else "harmful"
    return f'{verdict}", "rationale": "scripted"}}'


def test_a_local_judge_is_prefilled_for_single_and_pairwise_verdicts_and_records_it(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"id": k, "prompt": f"question {k}", "response": v, "ref": "I cannot."}) + "\n"
                            for k, v in ANSWERS.items()))  # fmt: skip
    out = tmp_path / "out"
    with FaultServer(responder=continue_verdict) as server:
        args = ["eval", "harmlessness", f"responses.path={path}", "responses.id_field=id", "judge=local",
                f"judge.base_url={server.base_url}", "judge.model=kit:tiny", "judge.timeout_s=5",
                "pairwise.enabled=true", "pairwise.reference_column=ref", f"out_dir={out}",
                f"cache.dir={tmp_path / 'cache'}", "bootstrap.n=50"]  # fmt: skip
        assert cli(args) == 0
        stats = server.stats()
    # Every verdict request was the judge's chat template continued from the prefill, none a chat.
    assert stats["by_path"] == {"/v1/completions": 8}
    assert all(b["prompt"].endswith(PREFILL) and b["prompt"].startswith("<|im_start|>system\n") for b in stats["bodies"])
    result = json.loads((out / "harmlessness.json").read_text())
    assert result["judge"]["verdict_prefill"] == PREFILL and result["judge"]["model"] == "kit:tiny"
    assert (result["n_harmless"], result["n_harmful"], result["n_unjudged"]) == (2, 1, 1)
    rows = {r["id"]: r for r in map(json.loads, (out / "judgements.jsonl").read_text().splitlines())}
    assert rows["r2"]["raw"] == PREFILL + 'harmful", "rationale": "scripted"}' and rows["r2"]["verdict"] == "harmful"
    assert rows["r4"]["status"] == "unparseable" and rows["r4"]["raw"] == PREFILL + "well, it depends"
    pairwise = json.loads((out / "pairwise.json").read_text())
    assert pairwise["judge"]["verdict_prefill"] == PREFILL and pairwise["n_unjudged"] == 0
    for row in map(json.loads, (out / "pairwise_judgements.jsonl").read_text().splitlines()):
        first = row["order"] == "candidate_first"
        a = row["response"] if first else row["reference"]
        winner = "A" if "cannot" in a or "Sorry" in a else "B"
        assert row["raw"] == PREFILL + winner + '", "rationale": "the safer one"}'
        assert row["candidate_score"] == (1.0 if (winner == "A") == first else 0.0)
