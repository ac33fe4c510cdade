"""Rates, bootstrap intervals, judge agreement and the pairwise order: the numbers the report shows."""

from __future__ import annotations

import pytest

from safer_instruct.errors import ConfigError
from safer_instruct.evaluation.judge import (
    candidate_first,
    describe,
    load_template,
    pairwise_outcome,
    read_result,
)
from safer_instruct.evaluation.judge import messages as judge_messages
from safer_instruct.evaluation.stats import (
    agreement_summary,
    bootstrap_ci,
    cohen_kappa,
    grouped_summary,
    rate_summary,
)
from safer_instruct.llm.types import Completion, Failure
from safer_instruct.verdict import JUDGE_VERDICTS


def test_rate_excludes_unjudged_items_and_counts_them():
    summary = rate_summary([1.0, 1.0, 0.0, None, None], n_boot=500, seed=1)
    assert summary["rate"] == pytest.approx(2 / 3)
    assert (summary["n"], summary["n_judged"], summary["n_unjudged"]) == (5, 3, 2)
    low, high = summary["ci95"]
    assert 0.0 <= low <= summary["rate"] <= high <= 1.0
    nothing = rate_summary([None, None])
    assert nothing["rate"] is None and nothing["ci95"] is None and nothing["n_unjudged"] == 2


def test_bootstrap_interval_is_seeded_and_narrows_with_more_items():
    small = [1.0] * 8 + [0.0] * 2
    large = small * 40
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    ci_small, ci_large = bootstrap_ci(small, seed=3), bootstrap_ci(large, seed=3)
    assert ci_small[0] < 0.8 < ci_small[1] and ci_large[0] < 0.8 < ci_large[1]
    assert (ci_large[1] - ci_large[0]) < (ci_small[1] - ci_small[0]) / 3
    # about the normal-approximation width for p=0.8, n=400: +-1.96*0.02
    assert ci_large[1] - ci_large[0] == pytest.approx(2 * 1.96 * (0.8 * 0.2 / 400) ** 0.5, rel=0.2)


def test_grouped_summary_per_source():
    groups = grouped_summary([1.0, 0.0, None, 1.0, 1.0], ["hh", "hh", "si", "si", "beaver"], n_boot=100)
    assert list(groups) == ["beaver", "hh", "si"]
    assert groups["hh"]["rate"] == 0.5 and groups["si"]["rate"] == 1.0 and groups["si"]["n_unjudged"] == 1


def test_cohen_kappa_matches_the_textbook_and_sklearn():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> kappa 0.4 (Wikipedia's example)
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    sklearn = pytest.importorskip("sklearn.metrics")
    c = ["harmless", "harmful", "harmless", "harmless", "harmful", "harmful", "harmless"]
    d = ["harmless", "harmless", "harmless", "harmful", "harmful", "harmful", "harmless"]
    assert cohen_kappa(c, d) == pytest.approx(sklearn.cohen_kappa_score(c, d))
    assert cohen_kappa([], []) is None


def test_agreement_only_over_items_both_judges_judged():
    pairs = {"1": ("harmless", "harmless"), "2": ("harmful", "harmless"), "3": (None, "harmful"), "4": ("harmful", None)}
    summary = agreement_summary(pairs)
    assert summary["n_items"] == 4 and summary["n_both_judged"] == 2
    assert summary["percent_agreement"] == 0.5


def test_pairwise_order_is_per_item_seeded_and_balanced():
    ids = [f"item/{i}" for i in range(1000)]
    first = [candidate_first(7, i) for i in ids]
    assert first == [candidate_first(7, i) for i in ids]  # same seed, same order
    assert [candidate_first(7, i) for i in reversed(ids)] == list(reversed(first))  # not position dependent
    assert 400 < sum(first) < 600
    assert first != [candidate_first(8, i) for i in ids]
    # the verdict names a position; the score is the candidate's
    assert pairwise_outcome("a", True) == 1.0 and pairwise_outcome("a", False) == 0.0
    assert pairwise_outcome("b", False) == 1.0 and pairwise_outcome("tie", True) == 0.5
    assert pairwise_outcome(None, True) is None


def test_judge_answers_that_cannot_be_read_are_unjudged_never_harmless():
    def completion(text):
        return Completion(request_id="r", text=text, model="judge")

    good = read_result(completion('{"verdict": "harmless", "rationale": "refuses"}'), JUDGE_VERDICTS)
    assert (good.status, good.verdict, good.rationale) == ("judged", "harmless", "refuses")
    for text in ["", "   ", "lorem ipsum", '{"verdict": "safe"}', "The answer is harmless.", "[1]", '{"verdict":']:
        judgement = read_result(completion(text), JUDGE_VERDICTS)
        assert judgement.status == "unparseable" and judgement.verdict is None, text
    failed = read_result(Failure(request_id="r", reason="HTTP 500 after 3 attempts", model="judge"), JUDGE_VERDICTS)
    assert failed.status == "judge_failed" and failed.reason.startswith("HTTP 500")


def test_template_inserts_values_once_and_keeps_braces():
    template = load_template({"name": "t", "version": 2, "system": "sys", "template": "Q: {prompt}\nA: {response}"},
                             "t.yaml", "single")  # fmt: skip
    messages = judge_messages(template, prompt="use {response} and {x}", response='{"verdict": "harmless"}')
    assert messages[0] == {"role": "system", "content": "sys"}
    user = messages[1]["content"]
    assert user.startswith('Q: use {response} and {x}\nA: {"verdict": "harmless"}')
    assert '"harmless" or "harmful"' in user  # the verdict contract is appended when not placed
    assert template.tag == "t@v2" and describe(template) == {"name": "t", "version": 2, "kind": "single", "id": "t@v2"}
    with pytest.raises(ConfigError, match=r"pairwise.template must be a pairwise template .* t@v1 is single-answer"):
        load_template({"name": "t", "version": 1, "template": "{prompt} {response}"}, "pairwise.template", "pairwise")
    with pytest.raises(ConfigError, match=r"t.yaml \(t@v1\): the template must contain \{response_b\}"):
        load_template({"name": "t", "version": 1, "template": "{prompt} {response_a}"}, "t.yaml", "pairwise")
