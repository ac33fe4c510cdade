"""The demo's wall time per stage on this machine: `safer-instruct run experiment=demo`, timed.

    python bench/bench_demo.py                 # the demo (SmolLM2-135M, minutes on 2 CPU cores)
    python bench/bench_demo.py --quick         # the smoke experiment instead (tiny model)
    python bench/bench_demo.py --out FILE.json # also write the result row

Runs the experiment from nothing (fresh output dir and LLM answer cache) in its own process, then
runs the same command again, as a user would after it finished: every step must be skipped. Reports
the total wall time against the experiment's budget (demo 15 min, smoke 3 min), each stage's wall time
(from the markers the runner writes), the runner's own overhead (total minus the stages) and the
rerun's time as a share of the first run's, measured side by side in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = {"demo": 15 * 60, "smoke": 3 * 60}


def run(experiment: str, exp_dir: Path, cache_dir: Path) -> tuple[float, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "safer_instruct.cli", "run", f"experiment={experiment}",
               f"out_dir={exp_dir}", f"cache.dir={cache_dir}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("WANDB_MODE", "disabled")
    started = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, out


def stage_times(exp_dir: Path) -> dict[str, dict]:
    plan = json.loads((exp_dir / "experiment.json").read_text())
    times = {}
    for name, step in plan["steps"].items():
        marker = json.loads((Path(step["dir"]) / ".step-complete.json").read_text())
        times[name] = {"stage": step["stage"], "wall_s": marker.get("wall_s")}
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="time the smoke experiment instead of the demo")
    parser.add_argument("--out", type=Path, help="write the result row (JSON) here")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    experiment = "smoke" if args.quick else "demo"
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        base = args.keep or Path(tmp)
        exp_dir, cache_dir = base / experiment, base / "llm-cache"
        first_s, first = run(experiment, exp_dir, cache_dir)
        if first.returncode != 0:
            print(first.stdout[-4000:], first.stderr[-4000:], sep="\n", file=sys.stderr)
            print(f"bench_demo: `safer-instruct run experiment={experiment}` failed", file=sys.stderr)
            return 1
        rerun_s, rerun = run(experiment, exp_dir, cache_dir)
        times = stage_times(exp_dir)
    stages_s = sum(t["wall_s"] or 0.0 for t in times.values())
    budget = BUDGET_S[experiment]
    row = {
        "benchmark": f"{experiment}_wall_time",
        "metric": f"`safer-instruct run experiment={experiment}` wall time from nothing (s)",
        "value": round(first_s, 1),
        "target": f"< {budget} s on 2 CPU cores",
        "met": first_s < budget,
        "details": {
            "per_stage_s": times,
            "stages_total_s": round(stages_s, 1),
            "runner_overhead_s": round(first_s - stages_s, 1),
            "rerun_s": round(rerun_s, 1),
            "rerun_share_of_first": round(rerun_s / first_s, 4),
            "rerun_skipped_all": rerun.returncode == 0 and rerun.stdout.count("complete, skipped") == len(times),
            "cpu_count": os.cpu_count(),
        },
    }
    width = max(len(n) for n in times)
    print(f"{experiment}: {first_s:.1f} s from nothing (budget {budget} s), rerun {rerun_s:.1f} s "
          f"({100 * rerun_s / first_s:.1f}% of it, every step skipped: {row['details']['rerun_skipped_all']})")  # fmt: skip
    for name, t in times.items():
        print(f"  {name.ljust(width)}  {t['stage']:<18} {t['wall_s'] or 0:8.1f} s")
    print(f"  {'(runner)'.ljust(width)}  {'':<18} {first_s - stages_s:8.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
