"""The resumable phase store: append-only progress, torn-tail repair, sorted atomic output, funnel."""

import json

import pytest

from safer_instruct.construct.store import DROPPED, FAILED, KEPT, Funnel, PhaseStore, signature_of
from safer_instruct.errors import ConfigError
from safer_instruct.prompts import PromptTemplate


def test_progress_survives_a_torn_last_line_and_output_is_sorted(tmp_path):
    store = PhaseStore(tmp_path, "respond", "sig1")
    store.open()
    store.append("b#00", KEPT, {"id": "b#00", "chosen": "B"}, category="hate")
    store.append("a#00", KEPT, {"id": "a#00", "chosen": "A"}, category="hate")
    store.append("c#00", DROPPED, {"id": "c#00"}, reason="empty_response", category="violence")
    store.close()
    # A kill in the middle of a write leaves half a line.
    with store.progress_path.open("ab") as handle:
        handle.write(b'{"id": "d#00", "status": "kept", "ro')
    reopened = PhaseStore(tmp_path, "respond", "sig1")
    reopened.open()
    assert reopened.final_ids() == {"a#00", "b#00", "c#00"}
    assert reopened.progress_path.read_bytes().endswith(b"\n")
    reopened.append("d#00", KEPT, {"id": "d#00", "chosen": "D"}, category="violence")
    info = reopened.finish()
    assert [row["id"] for row in reopened.iter_output()] == ["a#00", "b#00", "d#00"]
    assert info["funnel"]["in"] == 4 and info["funnel"]["out"] == 3 and info["funnel"]["dropped"] == {"empty_response": 1}
    assert info["funnel"]["by_category"]["violence"] == {"in": 2, "out": 1, "dropped": {"empty_response": 1}}
    assert PhaseStore(tmp_path, "respond", "sig1").is_done()


def test_failed_items_are_asked_again_and_the_latest_record_wins(tmp_path):
    store = PhaseStore(tmp_path, "induce", "s")
    store.open()
    store.append("x", FAILED, {"id": "x"}, reason="llm_failure")
    store.append("y", KEPT, {"id": "y"})
    assert store.final_ids() == {"y"}
    store.append("x", KEPT, {"id": "x", "instruction": "retried"})
    info = store.finish()
    assert store.final_ids() == {"x", "y"} and info["funnel"]["out"] == 2
    only_failed = PhaseStore(tmp_path / "b", "induce", "s")
    only_failed.open()
    only_failed.append("z", FAILED, {"id": "z"})
    assert only_failed.finish()["funnel"]["dropped"] == {"llm_failure": 1}


def test_changed_settings_discard_stored_results(tmp_path):
    store = PhaseStore(tmp_path, "filter_instructions", "old")
    store.open()
    store.append("a", KEPT, {"id": "a"})
    store.finish()
    changed = PhaseStore(tmp_path, "filter_instructions", "new")
    assert not changed.is_done()
    changed.open()
    assert changed.final_ids() == set() and not changed.output_path.exists()


def test_corrupt_progress_line_is_a_data_error(tmp_path):
    store = PhaseStore(tmp_path, "respond", "s")
    store.open()
    store.progress_path.write_text('{"id": "a", "status": "kept", "row": {}}\nnot json\n')
    with pytest.raises(Exception, match="row 2"):
        store.final_ids()


def test_funnel_adds_up_per_category():
    funnel = Funnel()
    for category, status, reason in [("hate", KEPT, None), ("hate", DROPPED, "expert_fail"), ("", FAILED, None)]:
        funnel.add(category, status, reason)
    out = funnel.to_dict()
    assert out["in"] == 3 and out["out"] == 1 and out["dropped"] == {"expert_fail": 1, "llm_failure": 1}
    assert out["by_category"]["uncategorized"]["dropped"] == {"llm_failure": 1}


def test_signature_is_stable_and_order_insensitive():
    assert signature_of({"a": 1, "b": [1, 2]}) == signature_of({"b": [1, 2], "a": 1})
    assert signature_of({"a": 1}) != signature_of({"a": 2})


def test_templates_are_checked_when_loaded():
    def load(**node):
        return PromptTemplate.from_mapping({"name": "respond", "version": 1, **node}, "respond.yaml")

    ok = load(template="{instruction}", system="Be kind.").expect({"instruction"})
    assert ok.messages(instruction="Hi") == ({"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"})
    assert ok.tag == "respond@v1"
    with pytest.raises(ConfigError, match=r"respond.yaml \(respond@v1\): unknown field\(s\) \{instrucion\}"):
        load(template="{instrucion}").expect({"instruction"})
    with pytest.raises(ConfigError, match=r"must contain \{format_instructions\}"):
        load(template="{text}").expect({"text", "format_instructions"})
    with pytest.raises(ConfigError, match="version"):
        PromptTemplate.from_mapping({"name": "respond", "template": "{instruction}"}, "respond.yaml")
    with pytest.raises(ConfigError, match="only the escape of a literal"):  # str.format's escape: not ours
        load(template="{instruction} {{")
    rendered = ok.render(instruction='He said {"verdict": 1}')  # braces in values are left alone
    assert rendered == 'He said {"verdict": 1}' and json.loads(rendered[8:]) == {"verdict": 1}


def test_funnel_problems_are_detected_between_and_within_phases():
    from safer_instruct.construct.outputs import build_stats

    def phase(n_in, n_out, dropped, **extra):
        return {"funnel": {"in": n_in, "out": n_out, "dropped": dropped, "by_category": {}}, **extra}

    corpus = {"rows": 5, "kept": 4, "quarantined": 1}
    good = {"induce": phase(8, 8, {}, texts=4, samples_per_text=2, corpus=corpus),
            "filter_instructions": phase(8, 5, {"duplicate": 3}), "respond": phase(5, 5, {})}  # fmt: skip
    assert build_stats(good, {})["problems"] == []
    broken = dict(good, respond=phase(6, 6, {}), filter_instructions=phase(8, 5, {"duplicate": 2}))
    problems = build_stats(broken, {})["problems"]
    assert any("filter_instructions: in 8 != out 5 + dropped 2" in p for p in problems)
    assert any("respond: in 6 != previous phase's out 5" in p for p in problems)
    wrong_k = dict(good, induce=phase(7, 7, {}, texts=4, samples_per_text=2, corpus=corpus))
    assert any("texts 4 x samples" in p for p in build_stats(wrong_k, {})["problems"])
