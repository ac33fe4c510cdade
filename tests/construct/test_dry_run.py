"""`safer-instruct construct ... dry_run=true`: requests and cost per phase and role, nothing sent.

The roles are the priced OpenAI preset (conf/llm/openai.yaml) pointed at a loopback server, so that a
request sent by mistake would be counted there; expected costs are computed here from
conf/llm/prices.yaml. Real runs (to resume from, or to fill the cache) use the scripted models of
scripted.py; the slow test runs the real tiny model.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from safer_instruct.cli import main as cli
from safer_instruct.config import compose
from safer_instruct.construct.dry_run import estimate_construct
from safer_instruct.construct.pipeline import run_construct
from safer_instruct.formatting import render_reverse_prompt, reverse_template
from tests.construct.scripted import ScriptedModels, scripted_overrides, write_corpus
from tests.helpers.dry_run import KEY_ENV, listed_cost
from tests.helpers.servers import FaultServer

INDUCER, EXPERT = "gpt-3.5-turbo", "gpt-4o"


def priced(base_url: str) -> list[str]:
    """Both roles on the priced OpenAI preset, served by the loopback server."""
    return ["llm@inducer=openai", f"inducer.model={INDUCER}", f"inducer.base_url={base_url}",
            f"inducer.api_key_env={KEY_ENV}", "inducer.rpm=null", "inducer.tpm=null", "inducer.max_tokens=40",
            "llm@expert=openai", f"expert.model={EXPERT}", f"expert.base_url={base_url}",
            f"expert.api_key_env={KEY_ENV}", "expert.rpm=null", "expert.tpm=null", "expert.max_tokens=50"]  # fmt: skip


def construct(server: FaultServer, root: Path, out: str, *extra: str, cache: str = "cache") -> list[str]:
    return ["construct", *scripted_overrides(server.base_url, root / out, root / "corpus.jsonl", root / cache),
            *priced(server.base_url), *extra]  # fmt: skip


def dry_run(args: list[str], capsys, via_cli: bool = False) -> tuple[dict, dict, str]:
    """Run `args` with dry_run=true; returns (rows by phase, the whole estimate, the printed table).
    Through the command line, or (faster: one config composition) through the stage's function."""
    out_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("out_dir=")))
    if via_cli:
        assert cli([*args, "dry_run=true"]) == 0
    else:
        estimate_construct(compose("construct", [*args[1:], "dry_run=true"]), out_dir)
    printed = capsys.readouterr().out
    estimate = json.loads((out_dir / "estimate.json").read_text())
    return {row["phase"]: row for row in estimate["rows"]}, estimate, printed


def test_dry_run_counts_exactly_prices_by_the_table_and_sends_nothing(tmp_path, capsys, no_server_no_weights):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    n_texts, k = len(corpus.read_text().splitlines()), 3
    with FaultServer() as server:
        args = construct(server, tmp_path, "out", f"induce.samples_per_text={k}")
        rows, estimate, printed = dry_run(args, capsys, via_cli=True)
        assert server.stats()["requests"] == 0 and server.stats()["by_path"] == {}

    induce = rows["induce"]
    assert (induce["requests"], induce["cached"], induce["to_send"]) == (n_texts * k, 0, n_texts * k)
    assert not induce["upper_bound"]
    template = reverse_template()
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    assert induce["est_prompt_tokens"] == k * sum(math.ceil(len(render_reverse_prompt(t, template)) / 4) for t in texts)  # ~4 chars a token
    assert induce["est_completion_tokens"] == n_texts * k * 40  # inducer.max_tokens per request
    # Later phases: every induced item is assumed to survive (nothing answered yet): an upper bound.
    for phase in ("filter_instructions", "respond", "filter_responses"):
        assert rows[phase]["requests"] == rows[phase]["to_send"] == n_texts * k and rows[phase]["upper_bound"]
        assert rows[phase]["est_completion_tokens"] == n_texts * k * 50
    # respond's prompt holds the stand-in instruction: at least inducer.max_tokens tokens per request.
    assert rows["respond"]["est_prompt_tokens"] >= n_texts * k * 40
    for phase, row in rows.items():
        model = INDUCER if phase == "induce" else EXPERT
        assert row["price_known"] and row["est_cost_usd"] == pytest.approx(
            listed_cost(model, row["est_prompt_tokens"], row["est_completion_tokens"]))
    total = estimate["total"]
    assert total["requests"] == 4 * n_texts * k and total["upper_bound"]
    assert total["est_cost_usd"] == pytest.approx(sum(row["est_cost_usd"] for row in rows.values()))
    assert "upper bound" in printed and "total" in printed and f"{total['est_cost_usd']:.4f}" in printed
    # Nothing of a run was made: no phase store, no dataset.
    assert not (tmp_path / "out" / "phases").exists() and not (tmp_path / "out" / "stats.json").exists()


def test_phase_subsets_expert_checks_off_and_unknown_prices(tmp_path, capsys, no_server_no_weights):
    write_corpus(tmp_path / "corpus.jsonl")
    with FaultServer() as server:
        rows, _, _ = dry_run(construct(server, tmp_path, "a", "phases=[induce]"), capsys)
        assert list(rows) == ["induce"]
        rows, _, _ = dry_run(construct(server, tmp_path, "b", "filter_instructions.expert_check=false",
                                       "filter_responses.expert_check=false"), capsys)  # fmt: skip
        assert rows["filter_instructions"]["requests"] == rows["filter_responses"]["requests"] == 0
        assert "expert_check off" in rows["filter_instructions"]["note"]
        assert rows["respond"]["requests"] == rows["induce"]["requests"] == 24
        rows, estimate, printed = dry_run(construct(server, tmp_path, "c", "expert.model=mystery-model"), capsys)
        assert server.stats()["requests"] == 0
    assert rows["respond"]["est_cost_usd"] is None and not rows["respond"]["price_known"]
    assert rows["induce"]["est_cost_usd"] == pytest.approx(
        listed_cost(INDUCER, rows["induce"]["est_prompt_tokens"], rows["induce"]["est_completion_tokens"]))
    assert not estimate["total"]["price_known"] and "unknown price" in printed


def test_dry_run_after_a_real_induce_run_resumes_from_out_dir_and_the_cache(tmp_path, capsys, no_server_no_weights):
    write_corpus(tmp_path / "corpus.jsonl")
    with FaultServer(responder=ScriptedModels()) as server:
        induce_only = construct(server, tmp_path, "out", "phases=[induce]")
        run_construct(compose("construct", induce_only[1:]), tmp_path / "out")
        assert server.stats()["requests"] == 24  # 12 texts x 2 samples

        # The same command again: induce is finished, a real rerun would send nothing.
        rows, _, _ = dry_run(induce_only, capsys)
        assert rows["induce"]["requests"] == 0 and "finished" in rows["induce"]["note"]
        # The next phase estimated from the real induced rows: exact, not an upper bound.
        rows, _, _ = dry_run(construct(server, tmp_path, "out", "phases=[filter_instructions]"), capsys)
        expected_checks = rows["filter_instructions"]["requests"]
        assert not rows["filter_instructions"]["upper_bound"] and "dropped by heuristics" in rows["filter_instructions"]["note"]
        assert 0 < expected_checks < 24

        # A fresh out_dir with the same cache: every induce request is cached, and the later phases
        # are estimated from the cached answers.
        fresh = construct(server, tmp_path, "fresh", "phases=[induce,filter_instructions,respond]")
        rows, estimate, _ = dry_run(fresh, capsys)
        induce = rows["induce"]
        assert (induce["requests"], induce["cached"], induce["to_send"]) == (24, 24, 0)
        assert induce["est_cost_usd"] == 0.0 and induce["est_prompt_tokens"] == 0
        assert rows["filter_instructions"]["requests"] == expected_checks and not rows["filter_instructions"]["upper_bound"]
        assert rows["respond"]["upper_bound"]  # the verdicts are not known yet
        assert server.stats()["requests"] == 24

        # The real run sends exactly what the estimate said.
        run_construct(compose("construct", [*fresh[1:-1], "phases=[induce,filter_instructions]"]), tmp_path / "fresh")
        assert server.stats()["requests"] == 24 + expected_checks

    # A run killed midway: 10 induce items finished, the rest to ask (cached or not).
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "out", killed)
    phase = killed / "phases" / "induce"
    (phase / "done.json").unlink()
    lines = (phase / "progress.jsonl").read_text().splitlines(keepends=True)
    (phase / "progress.jsonl").write_text("".join(lines[:10]) + lines[10][:15])  # and a half-written line
    with FaultServer() as server:
        rows, _, _ = dry_run(construct(server, tmp_path, "killed", "phases=[induce]", cache="empty-cache"), capsys)
        assert (rows["induce"]["requests"], rows["induce"]["cached"]) == (14, 0)
        assert "10 done earlier" in rows["induce"]["note"]
        rows, _, _ = dry_run(construct(server, tmp_path, "killed", "phases=[induce]"), capsys)
        assert (rows["induce"]["requests"], rows["induce"]["cached"], rows["induce"]["to_send"]) == (14, 14, 0)
        assert server.stats()["requests"] == 0
    assert not (tmp_path / "empty-cache").exists()  # a dry run creates no cache
    # The phases ran in a scratch copy: the killed run's store is as it was (half-written line included).
    assert (phase / "progress.jsonl").read_text() == "".join(lines[:10]) + lines[10][:15]
    assert not (phase / "done.json").exists()


@pytest.mark.slow
def test_dry_run_after_a_real_tiny_induce_run_finds_every_answer_cached(tmp_path, capsys):
    """The real tiny model served by `transformers serve` (local weights: cost 0, cache keyed by the
    weights' hash), as test_chain_tiny.py runs it."""
    from tests.helpers.servers import tiny_role_config

    role = tiny_role_config()
    write_corpus(tmp_path / "corpus.jsonl", ["t01", "t02", "t03", "t04"])

    def command(out: str) -> list[str]:
        return ["construct", "corpus=file", f"corpus.path={tmp_path / 'corpus.jsonl'}", f"out_dir={tmp_path / out}",
                f"cache.dir={tmp_path / 'cache'}", "tracking.mode=disabled", "phases=[induce]",
                "induce.samples_per_text=3", f"inducer.model={role['model']}", f"inducer.base_url={role['base_url']}",
                "inducer.max_tokens=8", "inducer.seed=7", "inducer.hf_generation_config=true",
                "expert.model=kit:tiny"]  # fmt: skip

    assert cli(command("out")) == 0
    rows, _, _ = dry_run(command("fresh"), capsys, via_cli=True)
    induce = rows["induce"]
    assert (induce["requests"], induce["cached"], induce["to_send"]) == (12, 12, 0)
    assert induce["price_known"] and induce["est_cost_usd"] == 0.0
    saved_config = (tmp_path / "out" / "config.yaml").read_text()
    rows, _, _ = dry_run(command("out"), capsys, via_cli=True)
    assert rows["induce"]["requests"] == 0
    # Estimating in a real run's dir keeps the config that run was made with.
    assert (tmp_path / "out" / "config.yaml").read_text() == saved_config
    assert "dry_run: true" in (tmp_path / "out" / "config.dry_run.yaml").read_text()
