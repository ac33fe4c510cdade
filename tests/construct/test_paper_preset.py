"""The paper preset's reverse and construct steps: what their jobs compose (as `run ... dry_run=true`
prints them), and the measurements on the release that two of its settings rest on (read in place,
skipped with the reason when the release is not on this machine)."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safer_instruct.config import compose
from safer_instruct.construct.heuristics import InstructionHeuristics, paste_ratio
from safer_instruct.formatting import render_reverse_prompt, reverse_template
from safer_instruct.paths import PROJECT_ROOT, release_location
from safer_instruct.pipeline.plan import build_plan, step_config

PATHS = ["paper.sharegpt_path=/data/sharegpt.json", "paper.corpus_path=/data/texts.jsonl"]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    cfg = compose("run", ["experiment=paper_safer_instruct", "launcher=slurm", "dry_run=true", *PATHS])
    return build_plan(cfg, tmp_path_factory.mktemp("paper"))


def test_reverse_and_construct_steps_use_the_papers_prompts(plan):
    reverse = step_config(plan, "reverse")
    assert render_reverse_prompt("{x}", reverse_template(reverse.reverse_prompt)) == (
        "Below is a response to a certain instruction. Write the instruction that the response is trying to "
        "complete.\n\n### response:\n{x}\n\n### Instruction:")  # fmt: skip
    assert (reverse.model.name, reverse.model.max_length, reverse.model.max_prompt_length) == ("llama-7b", 512, 256)
    construct = step_config(plan, "construct")
    assert construct.induce.reverse_prompt == "reverse_paper" and construct.inducer.max_tokens == 400
    assert (construct.prompts.respond.name, construct.prompts.respond.version) == ("respond-paper", 1) and "system" not in construct.prompts.respond
    assert construct.prompts.respond.template == "{instruction}"
    assert (construct.expert.model, construct.expert.max_tokens) == ("gpt-4-0613", 1280)
    assert construct.filter_instructions.heuristics.max_paste_ratio == 1.0
    assert dict(construct.on_truncated) == dict.fromkeys(("induce", "filter_instructions", "respond",
                                                          "filter_responses"), "drop")  # fmt: skip


def test_the_dry_run_prints_them(tmp_path):
    out = subprocess.run([sys.executable, "-m", "safer_instruct.cli", "run", "experiment=paper_safer_instruct",
                          "launcher=slurm", "dry_run=true", *PATHS, f"out_dir={tmp_path}"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for line in ("reverse_prompt=reverse_paper", "induce.reverse_prompt=reverse_paper", "inducer.max_tokens=400",
                 "prompts@prompts.respond=respond_paper", "expert.max_tokens=1280",
                 "filter_instructions.heuristics.max_paste_ratio=1.0"):  # fmt: skip
        assert re.search(rf"^\s+{re.escape(line)} \\$", out.stdout, re.M), line


def release_rows(name: str) -> list[dict]:
    path = Path(release_location()) / f"safer_instruct_{name}.csv"
    if not path.is_file():
        pytest.skip(f"the release's {path.name} is not at {path.parent} (set SAFER_INSTRUCT_RELEASE)")
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_paste_filter_is_off_because_the_release_keeps_fully_pasted_instructions(plan):
    # The release's hate and self-harm rows (the ones with `rejected`): many instructions quote the text,
    # some entirely, so any max_paste_ratio below 1.0 would drop rows the paper kept.
    rows = release_rows("hate") + release_rows("self-harm")
    ratios = [paste_ratio(r["instruction"], r["rejected"]) for r in rows]
    assert len(ratios) == 5721
    assert sum(r == 1.0 for r in ratios) == 335 and sum(r > 0.6 for r in ratios) == 1293
    heuristics = InstructionHeuristics.from_config(dict(step_config(plan, "construct").filter_instructions.heuristics))
    assert not any(heuristics.check(r["instruction"], r["rejected"]) == "pastes_text" for r in rows)
