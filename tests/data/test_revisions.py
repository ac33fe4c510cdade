"""Pinned inputs: a Hub dataset repo is read at `data.revision`, and the commit actually read is recorded.

Runs the real `huggingface_hub` offline against a Hub cache laid out in a temporary folder (the layout
snapshot_download writes: refs/<name> holds a commit, snapshots/<commit>/ the files), in a subprocess
so that the cache location and offline mode are read from the environment as in a real run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LOAD = """
import json, sys
from safer_instruct.data.sources import load_preferences
spec = {"source": "safer_instruct_release", "path": "someone/release", "categories": ["hate"]}
if sys.argv[1] != "-":
    spec["revision"] = sys.argv[1]
try:
    records, stats = load_preferences(spec)
    print(json.dumps({"rows": len(records), "revisions": stats.revisions(), "load": stats.to_dict()["revision"]}))
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
"""


def _hub_cache(root: Path) -> Path:
    repo = root / "datasets--someone--release"
    files = repo / "snapshots" / COMMIT
    files.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (files / "safer_instruct_hate.csv").write_text('instruction,rejected,chosen,label\n"Say hi",bad,hello,hate\n')
    (files / "test_set.csv").write_text("instruction,label,alpaca,gpt4,beaver\nq,si,a,b,c\n")
    return root


def _load(cache: Path, revision: str) -> dict:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", LOAD, revision], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_release_from_the_hub_records_the_commit_it_read(tmp_path):
    cache = _hub_cache(tmp_path / "hub")
    unpinned = _load(cache, "-")
    assert unpinned["rows"] == 1
    assert unpinned["revisions"] == {"someone/release": {"requested": None, "resolved": COMMIT}}
    pinned = _load(cache, COMMIT)
    assert pinned["revisions"] == {"someone/release": {"requested": COMMIT, "resolved": COMMIT}}
    assert pinned["load"] == pinned["revisions"]  # also in data_stats.json's load block
    other = _load(cache, "v0")  # a revision this cache does not hold: an error naming the repo, not another commit
    assert "hub:someone/release" in other["error"] and "could not fetch" in other["error"]
