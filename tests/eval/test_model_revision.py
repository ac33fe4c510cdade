"""A hub model pinned to `model.revision` is evaluated at that commit, and the commit is recorded.

The real `huggingface_hub` runs offline against a Hub cache laid out in a temporary folder (what
snapshot_download writes: refs/main holds a commit, snapshots/<commit>/ the files; here the tiny kit
model's files), in subprocesses so that the cache location and offline mode come from the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from safer_instruct.model_kit import pin_revision, resolve_model
from tests.pipeline.helpers import ROOT

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
PIN = """
import json, sys
from safer_instruct.errors import ModelNotFoundError
from safer_instruct.model_kit import pin_revision
try:
    print(json.dumps(pin_revision(sys.argv[1], sys.argv[2] if sys.argv[2] != "-" else None)))
except ModelNotFoundError as err:
    print(json.dumps({"error": str(err)}))
"""


def _hub_cache(root: Path) -> Path:
    repo = root / "models--someone--tiny"
    shutil.copytree(resolve_model("kit:tiny"), repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _pin(cache: Path, ref: str, revision: str):
    proc = subprocess.run([sys.executable, "-c", PIN, ref, revision], env=_env(cache), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_pinned_hub_id_becomes_the_snapshot_of_that_commit(tmp_path):
    cache = _hub_cache(tmp_path / "hub")
    folder, commit = _pin(cache, "someone/tiny", COMMIT)
    assert commit == COMMIT and Path(folder) == cache / "models--someone--tiny" / "snapshots" / COMMIT
    assert _pin(cache, "someone/tiny", "-") == ["someone/tiny", None]  # no revision: left to the loader
    missing = _pin(cache, "someone/tiny", "0" * 40)  # a commit this cache does not hold: a clear error
    assert "someone/tiny" in missing["error"] and "0" * 40 in missing["error"]
    local = resolve_model("kit:tiny")
    assert pin_revision(local, COMMIT) == (local, None)  # a local folder has no revision


def test_harmlessness_generates_with_the_pinned_commit_and_records_it(tmp_path):
    cache = _hub_cache(tmp_path / "hub")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "safer_instruct.cli", "eval", "harmlessness", "model=tiny", "model.path=someone/tiny",
         f"model.revision={COMMIT}", "llm@policy=inprocess", "policy.max_tokens=4", "judge=refusal",
         "prompt_set=harmbench", "prompts.limit=2", f"cache.dir={tmp_path / 'cache'}", f"out_dir={out}"],
        cwd=ROOT, env={**_env(cache), "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    generation = json.loads((out / "harmlessness.json").read_text())["generation"]
    assert generation["model_commit"] == COMMIT
