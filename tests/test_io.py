import gzip
import json

import pytest

from safer_instruct.data.schema import PreferenceRecord
from safer_instruct.errors import DataError
from safer_instruct.io import atomic_write_jsonl, file_type, iter_rows, read_jsonl


def test_jsonl_rows_are_numbered_and_bad_rows_reported(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": broken\n\xff\xfe\n[1]\n{"text": "b"}\n')
    rows = list(iter_rows(path))
    assert [(r.number, r.data, r.error is None) for r in rows if r.data] == [(1, {"text": "a"}, True), (6, {"text": "b"}, True)]
    errors = {r.number: r.error for r in rows if r.error}
    assert set(errors) == {3, 4, 5}
    assert "JSON" in errors[3] and "UTF-8" in errors[4] and "object" in errors[5]


def test_gzipped_jsonl_is_read_like_jsonl(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b'{"text": "a"}\n\n{"text": broken\n\xff\xfe\n[1]\n{"text": "b"}\n')
    rows = list(iter_rows(path))
    assert [(r.number, r.data) for r in rows if r.data] == [(1, {"text": "a"}), (6, {"text": "b"})]
    errors = {r.number: r.error for r in rows if r.error}
    assert "JSON" in errors[3] and "UTF-8" in errors[4] and errors[5] == "expected a JSON object, got list"
    assert file_type(path) == ".jsonl.gz" and file_type(tmp_path / "T.JSONL") == ".jsonl"
    with pytest.raises(DataError, match=r"c\.gz: unsupported file type '\.gz'"):
        (tmp_path / "c.gz").write_bytes(gzip.compress(b"x"))
        list(iter_rows(tmp_path / "c.gz"))


def test_csv_with_multiline_fields_comment_header_and_bad_bytes(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b'# dataset_version=1\ntext,label\n"line one\nline two",x\n"caf\xe9",y\nok,z\n')
    rows = list(iter_rows(path))
    assert rows[0].data == {"text": "line one\nline two", "label": "x"}
    assert rows[1].data is None and "'text'" in rows[1].error
    assert rows[2] .data == {"text": "ok", "label": "z"} and rows[2].number == 3


def test_parquet_and_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "c.parquet")
    assert [r.data["text"] for r in iter_rows(tmp_path / "c.parquet")] == ["a", "b"]
    (tmp_path / "c.json").write_text(json.dumps({"data": [{"text": "x"}, 3]}))
    rows = list(iter_rows(tmp_path / "c.json"))
    assert rows[0].data == {"text": "x"} and rows[1].error


def test_unsupported_and_missing_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="c.txt.*unsupported"):
        (tmp_path / "c.txt").write_text("x")
        list(iter_rows(tmp_path / "c.txt"))
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        list(iter_rows(tmp_path / "nope.jsonl"))


def test_atomic_jsonl_round_trip(tmp_path):
    rows = [{"prompt": "p", "n": 1}, {"prompt": "ü", "n": 2}]
    assert atomic_write_jsonl(tmp_path / "o.jsonl", rows) == 2
    assert read_jsonl(tmp_path / "o.jsonl") == rows
    assert not list(tmp_path.glob(".*tmp"))


def test_preference_record_validation_names_row_and_field():
    ok = PreferenceRecord.from_mapping({"prompt": "p", "chosen": "c", "rejected": "  ", "category": "hate"})
    assert ok.rejected is None and not ok.is_pair and ok.category == "hate"
    with pytest.raises(DataError, match=r"file d.csv, row 7, field 'chosen': is empty"):
        PreferenceRecord.from_mapping({"prompt": "p", "chosen": " "}, path="d.csv", row=7)
    with pytest.raises(DataError, match=r"row 2, field 'rejected': is missing"):
        PreferenceRecord.from_mapping({"prompt": "p", "chosen": "c"}, row=2, require_rejected=True)
    with pytest.raises(DataError, match="field 'prompt': must be text, got int"):
        PreferenceRecord.from_mapping({"prompt": 3, "chosen": "c"})


def test_atomic_writes_have_ordinary_permissions(tmp_path):
    import os
    import stat

    atomic_write_jsonl(tmp_path / "o.jsonl", [{"a": 1}])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "o.jsonl").stat().st_mode) == 0o666 & ~umask
