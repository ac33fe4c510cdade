"""`safer-instruct eval harmlessness ... dry_run=true`: generation and judge requests and their cost, nothing sent.

Judges are the priced presets (gpt4, claude3) pointed at a loopback server that counts any request sent
by mistake; expected costs come from conf/llm/prices.yaml, read here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from safer_instruct.cli import main as cli
from safer_instruct.config import compose
from safer_instruct.evaluation.harmlessness import estimate_harmlessness
from tests.helpers.dry_run import KEY_ENV, listed_cost
from tests.helpers.servers import FaultServer


def judges(server: FaultServer) -> list[str]:
    """gpt4 as the judge, claude3 as the second judge, both on the loopback server."""
    return ["judge=gpt4", f"judge.base_url={server.base_url}", f"judge.api_key_env={KEY_ENV}",
            "judge@second_judge=claude3", f"second_judge.base_url={server.base_url}",
            f"second_judge.api_key_env={KEY_ENV}"]  # fmt: skip


def dry_run(args: list[str], capsys, out: Path, via_cli: bool = False) -> tuple[dict, dict, str]:
    if via_cli:
        assert cli(["eval", "harmlessness", *args, f"out_dir={out}", "dry_run=true"]) == 0
    else:
        estimate_harmlessness(compose("eval_harmlessness", [*args, f"out_dir={out}", "dry_run=true"]), out)
    estimate = json.loads((out / "estimate.json").read_text())
    return {row["phase"]: row for row in estimate["rows"]}, estimate, capsys.readouterr().out


def test_pregenerated_answers_two_judges_and_pairwise(tmp_path, capsys, no_server_no_weights):
    answers = tmp_path / "answers.csv"
    with answers.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "response", "gpt4"])
        for i in range(7):
            writer.writerow([f"harmful prompt {i}", "" if i == 0 else f"answer {i} " * (i + 1),
                             "" if i == 1 else f"reference {i}"])  # fmt: skip
    with FaultServer() as server:
        args = [f"responses.path={answers}", *judges(server), "pairwise.enabled=true", f"cache.dir={tmp_path / 'cache'}"]
        rows, estimate, printed = dry_run(args, capsys, tmp_path / "out", via_cli=True)
        assert server.stats()["requests"] == 0

    assert set(rows) == {"judge", "second_judge", "pairwise"}  # no generation: the answers are given
    assert rows["judge"]["requests"] == rows["second_judge"]["requests"] == 6  # the empty answer is not judged
    assert rows["pairwise"]["requests"] == 5  # nor compared, nor the answer without a reference
    assert rows["judge"]["est_completion_tokens"] == 6 * 256 and rows["second_judge"]["est_completion_tokens"] == 6 * 256
    assert rows["judge"]["est_cost_usd"] == pytest.approx(
        listed_cost("gpt-4", rows["judge"]["est_prompt_tokens"], rows["judge"]["est_completion_tokens"]))
    assert rows["second_judge"]["est_cost_usd"] == pytest.approx(
        listed_cost("claude-3-opus", rows["second_judge"]["est_prompt_tokens"], rows["second_judge"]["est_completion_tokens"]))
    assert not any(row["upper_bound"] for row in rows.values())
    assert estimate["total"]["est_cost_usd"] == pytest.approx(sum(row["est_cost_usd"] for row in rows.values()))
    assert "1 without an answer" in rows["judge"]["note"] and "total" in printed
    assert not (tmp_path / "out" / "harmlessness.json").exists()


def test_generated_answers_are_estimated_with_stand_ins_of_policy_max_tokens(tmp_path, capsys, no_server_no_weights):
    with FaultServer() as server:
        base = ["model=tiny", "prompt_set=advbench", "prompts.limit=5", *judges(server)[:3], f"cache.dir={tmp_path}"]
        short, _, _ = dry_run([*base, "policy.max_tokens=100"], capsys, tmp_path / "short")
        long, estimate, printed = dry_run([*base, "policy.max_tokens=300"], capsys, tmp_path / "long")
        assert server.stats()["requests"] == 0
    policy = long["generate_answers"]
    assert (policy["requests"], policy["to_send"], policy["est_completion_tokens"]) == (5, 5, 5 * 300)
    assert policy["price_known"] and policy["est_cost_usd"] == 0.0  # a model we run ourselves
    # Each judge prompt holds a stand-in answer of policy.max_tokens tokens: 200 more tokens each.
    assert long["judge"]["est_prompt_tokens"] - short["judge"]["est_prompt_tokens"] == 5 * 200
    assert long["judge"]["upper_bound"] and long["judge"]["requests"] == 5
    assert long["judge"]["est_cost_usd"] == pytest.approx(
        listed_cost("gpt-4", long["judge"]["est_prompt_tokens"], long["judge"]["est_completion_tokens"]))
    assert estimate["total"]["upper_bound"] and "upper bound" in printed


def test_after_a_real_run_everything_is_cached(tmp_path, capsys, no_server_no_weights):
    def respond(path: str, body: dict) -> str:
        if "[RESPONSE]" in json.dumps(body):
            return '{"verdict": "harmless", "rationale": "ok"}'
        return "I cannot help with that."

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"harmful prompt {i}"}) + "\n" for i in range(4)))
    with FaultServer(responder=respond) as server:
        args = ["model=tiny", "prompt_set=file", f"prompts.path={prompts}", f"policy.base_url={server.base_url}",
                "policy.max_tokens=20", *judges(server)[:3], f"cache.dir={tmp_path / 'cache'}", "bootstrap.n=100"]  # fmt: skip
        before, _, _ = dry_run(args, capsys, tmp_path / "before")
        assert cli(["eval", "harmlessness", *args, f"out_dir={tmp_path / 'run'}"]) == 0
        sent = server.stats()["requests"]
        assert sent == before["generate_answers"]["to_send"] + before["judge"]["to_send"] == 8
        after, estimate, _ = dry_run(args, capsys, tmp_path / "after")
        assert server.stats()["requests"] == sent
    for stage in ("generate_answers", "judge"):
        assert (after[stage]["requests"], after[stage]["cached"], after[stage]["to_send"]) == (4, 4, 0)
    assert not after["judge"]["upper_bound"]  # the judge prompts hold the real (cached) answers
    assert estimate["total"]["est_cost_usd"] == 0.0
