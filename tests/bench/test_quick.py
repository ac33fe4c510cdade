"""Every benchmark's `--quick` mode runs and writes well-formed rows; `run_all.py --quick` collects them.

Quick modes are smoke checks of the scripts: nothing here looks at how fast anything was (that is
for `python bench/run_all.py` on a quiet machine). The scripts are the ones `run_all.py` discovers,
so a new benchmark is tested here without a line of change.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run_all import discover

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
TIMEOUT_S = 600  # a hung benchmark fails its test instead of holding up the whole run


def run_quick(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # fmt: skip


def assert_well_formed(row: dict) -> None:
    """A measured row (numeric value against a target) or a skipped one with its reason."""
    assert isinstance(row.get("benchmark"), str) and row["benchmark"], row
    if "skipped" in row:
        assert isinstance(row["skipped"], str) and row["skipped"].strip(), row
        return
    assert isinstance(row.get("metric"), str) and row["metric"], row
    value = row.get("value")
    assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), row
    assert isinstance(row.get("target"), str) and row["target"], row
    # `met` is None only for a figure reported without a target (the GPU throughput).
    reported_only = row.get("met") is None and row["target"].startswith("reported")
    assert isinstance(row.get("met"), bool) or reported_only, row
    assert isinstance(row.get("details"), dict), row


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("script", discover(), ids=lambda path: path.stem)
def test_quick_mode_writes_well_formed_rows(script, tmp_path):
    out = tmp_path / "rows.json"
    proc = run_quick(str(script), "--quick", "--out", str(out))
    assert proc.returncode == 0, f"{script.name} --quick failed:\n{proc.stderr[-4000:]}"
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and rows, rows
    for row in rows:
        assert_well_formed(row)
    if script.stem.startswith("gpu_") and not cuda_available():
        # Where a GPU benchmark cannot run, it says so rather than measuring something else.
        assert all("skipped" in row for row in rows), rows
        assert all(re.search(r"CUDA|GPU", row["skipped"]) for row in rows), rows


def test_no_helper_module_is_taken_for_a_benchmark():
    assert {path.name for path in discover()}.isdisjoint({"common.py", "run_all.py"})


def test_run_all_quick_writes_the_rows_of_what_it_ran(tmp_path):
    # Earlier results: a row of another script (kept by --update) and a stale row of bench_llm (replaced).
    judge_row = {"benchmark": "judge_concurrency", "metric": "m", "value": 12.0, "target": ">= 10x", "met": True,
                 "script": "bench_judge.py"}  # fmt: skip
    stale_row = {**judge_row, "benchmark": "llm_stale", "script": "bench_llm.py"}
    (tmp_path / "latest-quick.json").write_text(json.dumps({"when": "2026-01-01T00:00:00+00:00", "quick": True,
                                                            "rows": [judge_row, stale_row]}))  # fmt: skip
    proc = run_quick("bench/run_all.py", "--quick", "--only", "bench_llm", "--update", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest-quick.json", "latest-quick.md"]
    result = json.loads((tmp_path / "latest-quick.json").read_text())
    assert result["quick"] is True
    assert [row["benchmark"] for row in result["rows"]] == ["judge_concurrency", "llm_concurrency", "llm_cache"]
    assert result["rows"][0]["when"] == "2026-01-01T00:00:00+00:00"
    for row in result["rows"][1:]:
        assert_well_formed(row)
        assert row["script"] == "bench_llm.py" and row["when"] > "2026-01-01"
    table = (tmp_path / "latest-quick.md").read_text()
    assert "(quick mode)" in table and "Measured 2026-01-01T00:00:00+00:00 to " in table
    assert "| llm_concurrency |" in table and "| llm_cache |" in table and "| judge_concurrency |" in table


def test_gpu_check_cpu_dry_run_runs_every_part(tmp_path):
    # Where no GPU is lent, every part of the GPU check still runs, on CPU with a tiny Llama.
    out = tmp_path / "rows.json"
    proc = run_quick("bench/gpu_check.py", "--cpu-dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.rstrip().endswith("|")  # the table is printed last
    rows = {row["benchmark"]: row for row in json.loads(out.read_text())}
    assert sorted(rows) == ["gpu_chain", "gpu_dpo", "gpu_dpo_mfu", "gpu_generation", "gpu_matmul_peak", "gpu_qlora_dpo"]
    for row in rows.values():
        assert_well_formed(row)
        assert row["value"] > 0 and row["details"]["device"].startswith("cpu (dry run")
    assert out.with_suffix(".md").read_text().count("| gpu_") == 6
    training = rows["gpu_dpo"]["details"]
    assert training["steps"] >= 1 and training["trained_tokens"] > 0 and training["reference_pass_s"] > 0
    assert training["peak_source"] == "measured (gpu_matmul_peak)"
    assert training["peak_bf16_tflops"] == pytest.approx(rows["gpu_matmul_peak"]["value"], abs=1e-3)  # rounded there
    generation = rows["gpu_generation"]["details"]
    assert generation["generated_tokens"] == generation["batch"] * generation["new_tokens_per_prompt"]
    assert rows["gpu_generation"]["value"] == generation["tokens_per_s"]
    chain = rows["gpu_chain"]["details"]
    assert len(chain["sft_losses"]) == 4 and len(chain["dpo_losses"]) == 2
    if "answers" in chain:  # the release's test set is here: 64 prompts answered
        assert chain["answers"] == 64 and chain["non_empty_answers"] > 0
    else:
        assert chain["generation"].startswith("skipped: the release's test set is not here")
    qlora = rows["gpu_qlora_dpo"]["details"]
    assert qlora["steps"] == 2 and qlora["trained_tokens"] > 0


def test_gpu_check_without_cuda_skips_every_row_and_says_why(tmp_path):
    if cuda_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "rows.json"
    proc = run_quick("bench/gpu_check.py", "--parts", "matmul_peak", "dpo", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert [row["benchmark"] for row in rows] == ["gpu_matmul_peak", "gpu_dpo", "gpu_dpo_mfu"]
    assert all("no CUDA device" in row["skipped"] for row in rows)


def test_gpu_bundle_packing_lists_the_files_and_enforces_the_limit(tmp_path):
    from safer_instruct.paths import release_location

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "pkg-1.0-py3-none-any.whl").write_bytes(b"x" * 300_000)
    over = run_quick("bench/gpu_check.py", "--pack-bundle", str(bundle), "--bundle-limit-mib", "0.1")
    assert over.returncode == 1 and "over the 0.1 MiB limit" in over.stdout
    fits = run_quick("bench/gpu_check.py", "--pack-bundle", str(bundle), "--bundle-limit-mib", "60")
    assert fits.returncode == 0, fits.stdout + fits.stderr
    manifest = (bundle / "MANIFEST.md").read_text()
    assert "| `pkg-1.0-py3-none-any.whl` | 0.29 |" in manifest
    test_set = Path(release_location()) / "test_set.csv"
    if test_set.is_file():  # the chain's prompts travel with the bundle (never committed: .gpu-bundle/ is ignored)
        assert (bundle / "release" / "test_set.csv").read_bytes() == test_set.read_bytes()
        assert "| `release/test_set.csv` |" in manifest
