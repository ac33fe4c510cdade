"""Run every benchmark and collect their rows into bench/results/latest.json and latest.md.

Each `bench/bench_*.py` (and `bench/gpu_*.py`) script measures the framework against its baseline
side by side in one run and writes a JSON list of rows with `--out FILE` (bench/common.py makes them):

    {"benchmark": str, "metric": str, "value": float, "target": str, "met": bool, "details": {...}}

or `{"benchmark": ..., "skipped": "reason"}` where it cannot run here (the GPU benchmarks on a CPU
machine). This machine is noisy: absolute times are reported in `details`, never compared across runs.

    python bench/run_all.py            # full benchmarks (tens of minutes on 2 CPU cores)
    python bench/run_all.py --quick    # each benchmark's small mode (a smoke check, not a measurement)
    python bench/run_all.py --only llm judge
    python bench/run_all.py --only demo --update   # re-measure one, keep the other rows of latest.json

Each row records when it was measured (`when`); a ratio is always measured within one script's run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MET_SHOWN = {True: "yes", False: "no", None: "n/a"}  # None: a figure reported without a target


def discover() -> list[Path]:
    """The benchmark scripts; their helpers (common.py) are named to match neither pattern."""
    return sorted([*BENCH_DIR.glob("bench_*.py"), *BENCH_DIR.glob("gpu_*.py")])


def run_one(script: Path, quick: bool, timeout_s: int) -> list[dict]:
    """Run one benchmark script in its own process and return its rows (an error row if it failed)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(script), "--out", str(out), *(["--quick"] if quick else [])]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [{"benchmark": script.stem, "script": script.name, "error": f"timed out after {timeout_s} s"}]
        elapsed = time.perf_counter() - started
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return [{"benchmark": script.stem, "script": script.name, "error": f"exit {proc.returncode}: " + " / ".join(tail)}]
        rows = json.loads(out.read_text())
    for row in rows:
        row.setdefault("script", script.name)
        row.setdefault("wall_s", round(elapsed, 1))
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| benchmark | metric | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row or "error" in row:
            status = f"skipped: {row['skipped']}" if "skipped" in row else f"error: {row['error']}"
            status = status.replace("|", "/").replace("\n", " ")  # one table cell
            lines.append(f"| {row['benchmark']} | {status} | | | |")
            continue
        value = row["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| {row['benchmark']} | {row['metric']} | {shown} | {row['target']} | {MET_SHOWN[row['met']]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="run each benchmark's small mode")
    parser.add_argument("--only", nargs="*", default=None, help="substrings of script names to run")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per benchmark script")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where latest.json/.md go")
    parser.add_argument("--update", action="store_true",
                        help="replace only the rows of the scripts run now in the existing results, keep the rest")
    args = parser.parse_args(argv)

    scripts = [s for s in discover() if not args.only or any(o in s.stem for o in args.only)]
    rows: list[dict] = []
    for script in scripts:
        print(f"[bench] {script.name} ...", flush=True)
        new_rows = run_one(script, args.quick, args.timeout)
        for row in new_rows:
            row["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows.extend(new_rows)
        print(markdown_table(new_rows), flush=True)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = "latest-quick" if args.quick else "latest"
    results = args.results_dir / f"{name}.json"
    if args.update and results.exists():
        previous = json.loads(results.read_text())
        for row in previous["rows"]:
            row.setdefault("when", previous["when"])
        rows = merge_rows(previous["rows"], rows, [s.name for s in scripts])
    stamps = sorted(row["when"] for row in rows if "when" in row)
    span = stamps[0] if stamps[0] == stamps[-1] else f"{stamps[0]} to {stamps[-1]}"
    results.write_text(json.dumps({"when": stamps[-1], "quick": args.quick, "rows": rows}, indent=2) + "\n")
    (args.results_dir / f"{name}.md").write_text(f"Measured {span}{' (quick mode)' if args.quick else ''}.\n\n" + markdown_table(rows))
    print(f"[bench] wrote {results}")
    return 1 if any("error" in row for row in rows) else 0


def merge_rows(old: list[dict], new: list[dict], rerun: list[str]) -> list[dict]:
    """The old rows with those of the scripts in `rerun` replaced by the new ones, in discovery order."""
    order = {script.name: i for i, script in enumerate(discover())}
    kept = [row for row in old if row.get("script") not in rerun]
    return sorted([*kept, *new], key=lambda row: order.get(row.get("script"), len(order)))


if __name__ == "__main__":
    sys.exit(main())
