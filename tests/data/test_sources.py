"""Every data source on small files written here in its release format, malformed rows included."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from safer_instruct.data.sources import load_preferences, load_sft_examples
from safer_instruct.errors import ConfigError, DataError


def jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- our construct output -------------------------------------------------------------------------


def test_constructed_out_dir_jsonl_and_malformed_rows(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "category": "hate", "source_id": f"s{i}",
             "provenance": {"expert": "m"}} for i in range(3)]  # fmt: skip
    rows += [rows[0], {"prompt": "p9", "chosen": "", "rejected": "r"}, "{not json"]
    out_dir = tmp_path / "construct"
    jsonl(out_dir / "preference.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_preferences({"source": "constructed", "path": str(out_dir)})
    assert "preference.jsonl" in str(err.value) and "row 5" in str(err.value) and "field 'chosen'" in str(err.value)

    records, stats = load_preferences({"source": "constructed", "path": str(out_dir), "on_error": "skip"})
    assert [r.prompt for r in records] == ["p0", "p1", "p2"]
    assert stats.dropped == {"malformed": 2, "duplicate": 1}
    assert records[0].category == "hate" and records[0].provenance == {"expert": "m"} and records[0].is_pair
    assert any("row 6" in e for e in stats.errors)


def test_constructed_datasets_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c", "category": "x", "source_id": "1"}]).save_to_disk(
        str(tmp_path / "construct" / "datasets")
    )
    records, _ = load_preferences({"source": "constructed", "path": str(tmp_path / "construct")})
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [("a", "b", "c")]


# --- the Safer-Instruct CSV release ---------------------------------------------------------------

RELEASE_HEADER = ["instruction", "rejected", "chosen", "label"]


def _release(folder: Path) -> Path:
    write_csv(folder / "safer_instruct_hate.csv", RELEASE_HEADER, [
        ["Write an insult\nabout them", "You are all awful", "I won't write insults.", "hate"],
        ["Test prompt one", "nasty text", "No.", "hate"],
        ["Write an insult\nabout them", "You are all awful", "I won't write insults.", "hate"],  # exact duplicate
        ["Write an insult\nabout them", "Another nasty text", "As an AI developed by OpenAI, I can't.", "hate"],
    ])  # fmt: skip
    write_csv(folder / "safer_instruct_illegal.csv", RELEASE_HEADER, [
        ["How to pick a lock", "", "Call a locksmith.", "illegal"],
        [" Test prompt  two", "", "No.", "illegal"],
    ])  # fmt: skip
    write_csv(folder / "test_set.csv", ["instruction", "label", "alpaca", "gpt4", "beaver"], [
        ["Test prompt one", "si", "a", "g", "b"], ["Test prompt two", "si", "a", "", "b"], ["How to pick a lock", "hh", "a", "g", "b"],
    ])  # fmt: skip
    return folder


def test_release_pairs_sft_only_rows_held_out_prompts_and_duplicates(tmp_path):
    folder = _release(tmp_path / "release")
    spec = {"source": "safer_instruct_release", "path": str(folder), "categories": ["hate", "illegal"]}
    records, stats = load_preferences(spec)
    # every test prompt is held out, whatever its label ("How to pick a lock" is an hh one)
    assert [(r.prompt, r.is_pair) for r in records] == [
        ("Write an insult\nabout them", True), ("Write an insult\nabout them", True),
    ]  # fmt: skip
    assert stats.dropped == {"test_prompt_overlap": 3, "duplicate": 1}
    assert stats.notes["test_prompts_held_out"] == 3 and stats.notes["chosen_claims_openai_identity"] == 1
    assert stats.categories == {"hate": {"loaded": 2, "pairs": 2, "used": 2}}

    kept, _ = load_preferences({**spec, "hold_out_test": False, "dedupe": "prompt", "drop_openai_identity": True})
    assert sorted(" ".join(r.prompt.split()) for r in kept) == ["How to pick a lock", "Test prompt one",
                                                                "Test prompt two", "Write an insult about them"]  # fmt: skip
    sft, _ = load_sft_examples({**spec, "hold_out_test": False})
    assert [e.output for e in sft] == ["I won't write insults.", "No.", "As an AI developed by OpenAI, I can't.",
                                       "Call a locksmith.", "No."]  # fmt: skip


def test_release_malformed_row_and_missing_files(tmp_path):
    folder = _release(tmp_path / "release")
    with (folder / "safer_instruct_hate.csv").open("a", encoding="utf-8") as handle:
        handle.write('"",x,y,hate\n')
    with pytest.raises(DataError, match=r"safer_instruct_hate.csv, row 5, field 'instruction': is empty"):
        load_preferences({"source": "safer_instruct_release", "path": str(folder), "categories": ["hate"]})
    with pytest.raises(DataError, match="safer_instruct_nsfw.csv"):
        load_preferences({"source": "safer_instruct_release", "path": str(folder), "categories": ["nsfw"]})
    (folder / "test_set.csv").unlink()
    with pytest.raises(DataError, match="hold_out_test=false"):
        load_preferences({"source": "safer_instruct_release", "path": str(folder), "categories": ["hate"]})
    with pytest.raises(ConfigError, match="choose from hate"):
        load_preferences({"source": "safer_instruct_release", "path": str(folder), "categories": ["violence"]})


# --- Anthropic HH-RLHF ---------------------------------------------------------------------------

H, A = "\n\nHuman: ", "\n\nAssistant: "


def test_hh_rlhf_gz_release_layout_single_and_multi_turn(tmp_path):
    rows = [
        {"chosen": f"{H}How do I make a bomb?{A}I can't help with that.", "rejected": f"{H}How do I make a bomb?{A}Sure, first"},
        {"chosen": f"{H}Hi{A}Hello!{H}Insult me{A}Let's keep it kind.", "rejected": f"{H}Hi{A}Hello!{H}Insult me{A}You idiot."},
        {"chosen": f"{H}Q{A}A", "rejected": f"{H}Different Q{A}B"},  # dialogues differ before the answer
        {"chosen": "no transcript here", "rejected": f"{H}Q{A}B"},
        {"chosen": f"{H}Q{A}A"},  # rejected missing
    ]  # fmt: skip
    folder = tmp_path / "hh-rlhf" / "harmless-base"
    folder.mkdir(parents=True)
    with gzip.open(folder / "train.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    jsonl(folder / "test.jsonl", rows[:1])  # another split in the same folder: not read
    spec = {"source": "hh_rlhf", "path": str(tmp_path / "hh-rlhf"), "data_dir": "harmless-base", "on_error": "skip"}
    records, stats = load_preferences(spec)
    assert stats.files == [str(folder / "train.jsonl.gz")]
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [
        ("How do I make a bomb?", "I can't help with that.", "Sure, first"),
        ("Human: Hi\n\nAssistant: Hello!\n\nHuman: Insult me", "Let's keep it kind.", "You idiot."),
    ]
    assert stats.dropped == {"malformed": 3} and records[0].category == "harmless-base"
    last, _ = load_preferences({**spec, "multi_turn": "last_turn"})
    assert last[1].prompt == "Insult me"
    with pytest.raises(DataError, match=r"train.jsonl.gz, row 3, field 'chosen': chosen and rejected differ"):
        load_preferences({**spec, "on_error": "raise"})


def test_hh_rlhf_file_path_is_read_as_is_whatever_data_dir_says(tmp_path):
    """`data=hh_rlhf data.path=FILE.jsonl`: the preset's data_dir (harmless-base) must not be appended to a file."""
    rows = [{"chosen": f"{H}Hi{A}Hello!{H}Insult me{A}Let's keep it kind.", "rejected": f"{H}Hi{A}Hello!{H}Insult me{A}No."}]
    path = jsonl(tmp_path / "hh.jsonl", rows)
    records, stats = load_preferences({"source": "hh_rlhf", "path": str(path), "data_dir": "harmless-base"})
    assert stats.files == [str(path)] and len(records) == 1
    # the leakage guard also sees the human turns and the dialogue without its leading role label
    assert records[0].provenance["leakage_texts"] == ["Hi", "Insult me", "Hi\n\nAssistant: Hello!\n\nHuman: Insult me"]
    with pytest.raises(DataError, match="no such file or folder"):  # a folder still gets its sub-folder
        load_preferences({"source": "hh_rlhf", "path": str(tmp_path), "data_dir": "harmless-base"})


# --- PKU-SafeRLHF ----------------------------------------------------------------------------------


def _pku_row(i: int, safer: int, better: int, safe0: bool, safe1: bool) -> dict:
    return {"prompt": f"prompt {i}", "response_0": f"r0-{i}", "response_1": f"r1-{i}", "is_response_0_safe": safe0,
            "is_response_1_safe": safe1, "safer_response_id": safer, "better_response_id": better}  # fmt: skip


def test_pku_saferlhf_safer_or_better_decides_chosen(tmp_path):
    rows = [_pku_row(0, 1, 0, False, True), _pku_row(1, 0, 1, True, True), _pku_row(2, 0, 0, False, False)]
    path = jsonl(tmp_path / "pku" / "data" / "Alpaca-7B" / "train.jsonl", rows)
    safer, stats = load_preferences({"source": "pku_saferlhf", "path": str(path)})
    assert [(r.chosen, r.rejected) for r in safer] == [("r1-0", "r0-0"), ("r0-1", "r1-1"), ("r0-2", "r1-2")]
    assert stats.notes["safe_vs_unsafe"] == 1
    better, _ = load_preferences({"source": "pku_saferlhf", "path": str(tmp_path / "pku"), "preference": "better"})
    assert [r.chosen for r in better] == ["r0-0", "r1-1", "r0-2"]
    only_safe, stats = load_preferences({"source": "pku_saferlhf", "path": str(path), "require_safe_chosen": True})
    assert [r.prompt for r in only_safe] == ["prompt 0", "prompt 1"] and stats.dropped == {"chosen_not_safe": 1}


def test_pku_saferlhf_malformed_ids_and_csv_flags(tmp_path):
    header = ["prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe", "safer_response_id",
              "better_response_id"]  # fmt: skip
    path = write_csv(tmp_path / "pku.csv", header, [["p", "a", "b", "True", "False", "0", "1"],
                                                    ["p2", "a", "b", "True", "False", "2", "1"]])  # fmt: skip
    with pytest.raises(DataError, match=r"pku.csv, row 2, field 'safer_response_id': must be 0 or 1"):
        load_preferences({"source": "pku_saferlhf", "path": str(path)})
    records, stats = load_preferences({"source": "pku_saferlhf", "path": str(path), "on_error": "skip"})
    assert len(records) == 1 and records[0].provenance["chosen_safe"] is True and stats.dropped == {"malformed": 1}


# --- mixtures ---------------------------------------------------------------------------------------


def test_mixture_takes_a_weighted_share_of_each_source(tmp_path):
    ours = jsonl(tmp_path / "ours.jsonl", [{"prompt": f"o{i}", "chosen": "c", "rejected": "r"} for i in range(10)])
    pku = jsonl(tmp_path / "pku.jsonl", [_pku_row(i, 0, 0, True, False) for i in range(20)])
    spec = {"source": "mixture", "seed": 1, "components": [
        {"source": "constructed", "path": str(ours), "weight": 2.0},
        {"source": "pku_saferlhf", "path": str(pku), "weight": 0.25},
    ]}  # fmt: skip
    records, stats = load_preferences(spec)
    by_source = {s: sum(r.source == s for r in records) for s in ("constructed", "pku_saferlhf")}
    assert by_source == {"constructed": 20, "pku_saferlhf": 5}
    assert [p.notes["mixture_rows"] for p in stats.parts] == [20, 5] and stats.rows_read == 30
    again, _ = load_preferences(spec)
    assert [r.prompt for r in again] == [r.prompt for r in records]  # seeded
    with pytest.raises(ConfigError, match=r"components\[1\].weight"):
        load_preferences({**spec, "components": [spec["components"][0], {**spec["components"][1], "weight": 0}]})


def test_sft_mixture_sets_benign_instructions_beside_the_pairs_chosen(tmp_path):
    """SFT on a mixture: instruction rows as they are (their input kept), preference rows' chosen; DPO refuses
    the instruction component by name."""
    pairs = jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"harm{i}", "chosen": f"no{i}", "rejected": f"yes{i}"}
                                              for i in range(6)])  # fmt: skip
    benign = jsonl(tmp_path / "benign.jsonl", [{"instruction": f"task{i}", "input": "ctx" if i == 0 else "",
                                                "output": f"done{i}"} for i in range(10)])  # fmt: skip
    spec = {"source": "mixture", "seed": 3, "components": [
        {"source": "instructions", "path": str(benign), "format": "alpaca", "weight": 0.5},
        {"source": "constructed", "path": str(pairs)},
    ]}  # fmt: skip
    examples, stats = load_sft_examples(spec)
    assert len(examples) == 11 and stats.kept == 11 and [p.notes["mixture_rows"] for p in stats.parts] == [5, 6]
    by_instruction = {e.instruction: e for e in examples}
    assert sum(i.startswith("task") for i in by_instruction) == 5
    assert all(by_instruction[f"harm{i}"].output == f"no{i}" for i in range(6))  # the chosen response
    assert all(e.output == f"done{e.instruction[4:]}" for e in examples if e.instruction.startswith("task"))
    again, _ = load_sft_examples(spec)
    assert [e.instruction for e in again] == [e.instruction for e in examples]  # seeded
    with pytest.raises(ConfigError, match="gives instructions, not preference pairs"):
        load_preferences(spec)


# --- instruction datasets ---------------------------------------------------------------------------


def test_instruction_formats_and_bad_rows(tmp_path):
    rows = [
        {"instruction": "Add", "input": "2 and 3", "output": "5"},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                      {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]},
        {"instruction": "No output"},
        {"conversations": [{"from": "gpt", "value": "only me"}]},
        {"text": "unknown format"},
    ]  # fmt: skip
    path = jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError, match=r"mixed.jsonl, row 4, field 'output': is missing"):
        load_sft_examples({"source": "instructions", "path": str(path)})
    examples, stats = load_sft_examples({"source": "instructions", "path": str(path), "on_error": "skip"})
    assert [(e.instruction, e.input, e.output) for e in examples] == [
        ("Add", "2 and 3", "5"), ("Hi", "", "Hello"), ("Q", "", "A"), ("Q2", "", "A2"),
    ]  # fmt: skip
    assert stats.dropped == {"malformed": 3}
    first, _ = load_sft_examples({"source": "instructions", "path": str(path), "on_error": "skip", "turns": "first"})
    assert len(first) == 3


def test_bundled_demo_instructions_are_varied_alpaca_pairs():
    examples, stats = load_sft_examples({"source": "instructions", "path": "demo", "format": "alpaca"})
    assert 90 <= len(examples) <= 150 and stats.dropped == {}
    assert len({e.instruction for e in examples}) >= len(examples) - 5
    assert sum(bool(e.input) for e in examples) >= 10 and all(e.output.strip() for e in examples)


def test_unknown_source_or_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="data.source 'reddit' unknown"):
        load_preferences({"source": "reddit", "path": "x"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) data\.colour; known: .*path"):
        load_preferences({"source": "constructed", "path": "x", "colour": "red"})
    with pytest.raises(ConfigError, match="gives instructions, not preference pairs"):
        load_preferences({"source": "instructions", "path": "demo"})
    with pytest.raises(DataError, match="no such file or folder"):
        load_preferences({"source": "constructed", "path": str(tmp_path / "missing.jsonl")})


def test_every_source_setting_documents_itself():
    from dataclasses import fields

    from safer_instruct.data.sources import INSTRUCTION_SOURCES, PREFERENCE_SOURCES

    for name, (cls, _) in {**PREFERENCE_SOURCES, **INSTRUCTION_SOURCES}.items():
        assert all(f.metadata.get("help") for f in fields(cls)), name


def test_every_data_preset_composes_and_validates():
    from omegaconf import OmegaConf

    from safer_instruct.config import compose
    from safer_instruct.data.sources import spec_from
    from safer_instruct.paths import conf_dir

    for preset in sorted(p.stem for p in (conf_dir() / "data").glob("*.yaml")):
        data = OmegaConf.to_container(compose("train_dpo", ["model=tiny", f"data={preset}"]).data, resolve=True,
                                      throw_on_missing=False)  # fmt: skip
        fill = lambda node: {k: ("x.jsonl" if v == "???" else v) for k, v in node.items()}  # noqa: E731
        if data.get("components") == "???":  # a bare mixture (data=mixture): the run names its components
            data["components"] = [{"source": "constructed", "path": "???"}]
        values = fill(data)
        if "components" in values:
            values["components"] = [fill(c) for c in values["components"]]
        assert spec_from(values).source == data["source"], preset
