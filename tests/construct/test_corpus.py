"""Corpus input: readers, the shipped corpora, and every kind of bad row (error or quarantine, counted)."""

import json

import pytest

from safer_instruct.data.corpus import BAD_ROW_REASONS, CorpusSpec, read_corpus
from safer_instruct.errors import ConfigError, DataError


def _jsonl(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode() for line in lines))
    return path


def bad_corpus(tmp_path):
    """One good row, then one row of every bad kind (row numbers are JSONL line numbers)."""
    return _jsonl(tmp_path / "corpus.jsonl", [
        {"text": "A perfectly fine undesired text.", "category": "hate"},        # 1 ok
        {"body": "no text field here", "category": "hate"},                       # 2 missing_field
        {"text": "   \n\t ", "category": "hate"},                                 # 3 empty_text
        b'{"text": "caf\xe9 undecodable", "category": "hate"}\n',                  # 4 undecodable bytes
        {"text": "x" * 500, "category": "violence"},                              # 5 too_long (max_chars 200)
        b'{"text": "broken json\n',                                               # 6 malformed
        {"text": 42, "category": "hate"},                                         # 7 not_text
        b'{"text": "lone \\udcff surrogate"}\n',                          # 8 undecodable (escaped)
        {"text": "Another fine text without a category."},                        # 9 ok, default category
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("row", "field", "reason_text"),
    [(2, "text", "is missing"), (3, "text", "empty or only whitespace"), (4, None, "UTF-8"),
     (5, "text", "max_chars"), (6, None, "JSON"), (7, "text", "must be text"), (8, "text", "undecodable")],
)  # fmt: skip
def test_each_bad_row_kind_is_a_data_error_naming_file_row_and_field(tmp_path, row, field, reason_text):
    path = bad_corpus(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    only = tmp_path / "only.jsonl"
    only.write_bytes(lines[0] + b"\n" * (row - 2) + lines[row - 1])  # keep the bad line at its own row number
    with pytest.raises(DataError) as info:
        list(read_corpus({"path": str(only), "on_bad_row": "error", "max_chars": 200}))
    err = info.value
    assert err.path == str(only) and err.row == row and (field is None or err.field == field)
    assert reason_text in str(err) and f"row {row}" in str(err) and str(only) in str(err)


def test_quarantine_counts_every_bad_row_and_keeps_the_good_ones(tmp_path):
    path = bad_corpus(tmp_path)
    quarantine = tmp_path / "out" / "quarantine.jsonl"
    reader = read_corpus({"path": str(path), "on_bad_row": "quarantine", "max_chars": 200,
                          "default_category": "misc"}, quarantine)  # fmt: skip
    texts = list(reader)
    assert [t.text for t in texts] == ["A perfectly fine undesired text.", "Another fine text without a category."]
    assert [t.category for t in texts] == ["hate", "misc"]
    assert [t.source_id for t in texts] == ["corpus/0000001", "corpus/0000009"]
    counts = reader.counts.to_dict()
    assert counts["quarantined_by_reason"] == {"missing_field": 1, "empty_text": 1, "undecodable": 2,
                                               "too_long": 1, "malformed": 1, "not_text": 1}  # fmt: skip
    assert set(counts["quarantined_by_reason"]) <= set(BAD_ROW_REASONS)
    assert counts["rows"] == counts["kept"] + counts["quarantined"] == 9
    assert counts["category_defaulted"] == 1
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in records] == [
        (2, "missing_field"), (3, "empty_text"), (4, "undecodable"), (5, "too_long"), (6, "malformed"),
        (7, "not_text"), (8, "undecodable")]  # fmt: skip


def test_csv_and_parquet_corpora_with_own_field_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.csv").write_bytes(b'reply,kind,uid\n"multi\nline reply",rude,u1\n"",rude,u2\n')
    with pytest.raises(DataError, match=r"c.csv, row 2, field 'reply': is empty"):
        list(read_corpus({"path": str(tmp_path / "c.csv"), "text_field": "reply", "category_field": "kind"}))
    reader = read_corpus({"path": str(tmp_path / "c.csv"), "text_field": "reply", "category_field": "kind",
                          "id_field": "uid", "on_bad_row": "quarantine"})  # fmt: skip
    assert [(t.source_id, t.text, t.category) for t in reader] == [("u1", "multi\nline reply", "rude")]
    pq.write_table(pa.table({"t": ["one", "two", None]}), tmp_path / "c.parquet")
    reader = read_corpus({"path": str(tmp_path / "c.parquet"), "text_field": "t", "category_field": None,
                          "on_bad_row": "quarantine", "limit": 5})  # fmt: skip
    assert [t.text for t in reader] == ["one", "two"] and reader.counts.quarantined == {"missing_field": 1}


def test_pyrit_harm_corpus_is_real_harmful_responses_by_category():
    reader = read_corpus({"path": "pyrit:harm", "on_bad_row": "quarantine", "max_chars": 6000})
    texts = list(reader)
    categories = {t.category for t in texts}
    assert len(texts) > 250 and {"hate_speech", "violence", "self_harm", "sexual_content"} <= categories
    assert len({t.source_id for t in texts}) == len(texts)  # ids are unique and stable
    assert all(t.source_id.startswith("pyrit-harm/") for t in texts)
    # A harsher score threshold keeps fewer texts: the threshold is applied, not ignored.
    strict = list(read_corpus({"path": "pyrit:harm", "on_bad_row": "quarantine", "min_score": 1.0}))
    assert 0 < len(strict) < len(texts)


def test_limit_per_category_draws_from_every_category_and_counts_the_rest():
    everything = list(read_corpus({"path": "pyrit:harm", "on_bad_row": "quarantine"}))
    per_category = {c: sum(t.category == c for t in everything) for c in {t.category for t in everything}}
    reader = read_corpus({"path": "pyrit:harm", "on_bad_row": "quarantine", "limit_per_category": 2})
    texts = list(reader)
    assert {c: sum(t.category == c for t in texts) for c in per_category} == {c: min(2, n) for c, n in per_category.items()}
    # The first texts of each category, in corpus order; the others are counted, not lost silently.
    assert [t.source_id for t in texts] == [t.source_id for t in everything if t in texts]
    assert reader.counts.over_category_limit == len(everything) - len(texts)
    # With `limit`, the per-category cap applies first: 5 texts, no category over 1.
    both = list(read_corpus({"path": "pyrit:harm", "on_bad_row": "quarantine", "limit_per_category": 1, "limit": 5}))
    assert len(both) == 5 and len({t.category for t in both}) == 5
    with pytest.raises(ConfigError, match="limit_per_category"):
        CorpusSpec.from_config({"path": "x.jsonl", "limit_per_category": 0})


def test_many_shot_and_customer_support_corpora():
    shots = list(read_corpus({"path": "pyrit:many_shot"}))
    assert len(shots) == 400 and {t.category for t in shots} == {"harmbench"}
    support = list(read_corpus({"path": "conf:corpus/customer_support_rude.jsonl", "text_field": "reply",
                                "category_field": "kind", "id_field": "id"}))  # fmt: skip
    assert len(support) == 48 and {t.category for t in support} == {"rude", "dismissive", "unhelpful", "blaming"}
    assert support[0].source_id == "cs-001"


def test_bad_corpus_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="on_bad_row"):
        CorpusSpec.from_config({"path": "x.jsonl", "on_bad_row": "skip"})
    with pytest.raises(ConfigError, match="unknown built-in corpus"):
        list(read_corpus({"path": "pyrit:nothing"}))
    with pytest.raises(DataError, match="file not found"):
        list(read_corpus({"path": str(tmp_path / "absent.jsonl")}))
    with pytest.raises(DataError, match="could not load hub dataset"):
        list(read_corpus({"path": "hub:nobody/no-such-dataset-offline"}))
