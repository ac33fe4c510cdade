"""The demo's wall time per stage on this machine: `safer-instruct run experiment=demo`, timed.

    python bench/bench_demo.py                 # the demo (SmolLM2-135M, minutes on 2 CPU cores)
    python bench/bench_demo.py --quick         # the smoke experiment's first step instead (seconds)
    python bench/bench_demo.py --out FILE.json # also write the result row

Runs the experiment from nothing (fresh output dir and LLM answer cache) in its own process, then
runs the same command again, as a user would after it finished: every step must be skipped. Reports
the total wall time against the experiment's budget (demo 15 min, smoke 3 min), each stage's wall time
(from the markers the runner writes), the runner's own overhead (total minus the stages) and the
rerun's time as a share of the first run's, measured side by side in this one run. For the demo it
also records what its report's first lines say changed (refusal rate on harmful prompts, answer rate on
benign prompts, base -> DPO model), each LLM-judged result's unjudged count, where the release slice
came from, and the load average (the CPU is shared: a loaded machine makes every stage slower). The quick
mode is a check of this script, not of the chain: the whole smoke chain is tests/pipeline/test_smoke.py's.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

common.setup_env()  # the runs below inherit it: offline, no wandb

BUDGET_S = {"demo": 15 * 60, "smoke": 3 * 60}


def run(arguments: list[str], exp_dir: Path, cache_dir: Path) -> tuple[float, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "safer_instruct.cli", *arguments, f"out_dir={exp_dir}", f"cache.dir={cache_dir}"]
    started = time.perf_counter()
    out = subprocess.run(command, cwd=common.ROOT, capture_output=True, text=True)
    return time.perf_counter() - started, out


def first_step_only(experiment: str) -> list[str]:
    """The overrides that run only the experiment's first step (which needs no other), without a report."""
    from safer_instruct.config import compose

    steps = list(compose("run", [f"experiment={experiment}"]).experiment.steps)
    return [f"skip=[{','.join(steps[1:])}]", "experiment.report_step=null"]


def stage_times(exp_dir: Path) -> dict[str, dict]:
    plan = json.loads((exp_dir / "experiment.json").read_text())
    times = {}
    for name, step in plan["steps"].items():
        marker = json.loads((Path(step["dir"]) / ".step-complete.json").read_text())
        times[name] = {"stage": step["stage"], "wall_s": marker.get("wall_s")}
    return times


def report_findings(exp_dir: Path) -> dict:
    """What the demo's report says changed, and how many verdicts each LLM judge left unjudged."""
    report = exp_dir / "report" / "report.json"
    findings: dict = {"what_changed": json.loads(report.read_text()).get("what_changed") if report.is_file() else None}
    unjudged = {}
    for result in sorted(exp_dir.glob("*/*/harmlessness.json")):
        h = json.loads(result.read_text())
        if h.get("metric") != "refusal_rate":  # an LLM judge's result
            unjudged[f"{result.parent.parent.name}/{result.parent.name}"] = {
                "n": h.get("n"), "n_unjudged": h.get("n_unjudged"), "reasons": h.get("unjudged"),
                "judge_max_tokens": (h.get("judge") or {}).get("max_tokens")}  # fmt: skip
    findings["llm_judge_unjudged"] = unjudged
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, "time the smoke experiment's first step instead of the demo")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    experiment = "smoke" if args.quick else "demo"
    arguments = ["run", f"experiment={experiment}", *(first_step_only(experiment) if args.quick else [])]
    command = shlex.join(["safer-instruct", *arguments])
    from safer_instruct.paths import find_release

    release = find_release().line
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        base = args.keep or Path(tmp)
        exp_dir, cache_dir = base / experiment, base / "llm-cache"
        first_s, first = run(arguments, exp_dir, cache_dir)
        load_after = os.getloadavg()
        if first.returncode != 0:
            print(first.stdout[-4000:], first.stderr[-4000:], sep="\n", file=sys.stderr)
            print(f"bench_demo: `{command}` failed", file=sys.stderr)
            return 1
        rerun_s, rerun = run(arguments, exp_dir, cache_dir)
        times = stage_times(exp_dir)
        findings = report_findings(exp_dir) if not args.quick else {}
    stages_s = sum(t["wall_s"] or 0.0 for t in times.values())
    budget = BUDGET_S[experiment]
    rerun_skipped_all = rerun.returncode == 0 and rerun.stdout.count("complete, skipped") == len(times)
    result = common.row(
        f"{experiment}_wall_time",
        metric=f"`{command}` wall time from nothing (s)",
        value=round(first_s, 1),
        target=f"< {budget} s on 2 CPU cores",
        met=first_s < budget,
        details={
            "per_stage_s": times,
            "stages_total_s": round(stages_s, 1),
            "runner_overhead_s": round(first_s - stages_s, 1),
            "rerun_s": round(rerun_s, 1),
            "rerun_share_of_first": round(rerun_s / first_s, 4),
            "rerun_skipped_all": rerun_skipped_all,
            "cpu_count": os.cpu_count(),
            "load_avg_1_5_15_before_after": [[round(x, 2) for x in load_before], [round(x, 2) for x in load_after]],
            "release": release,
            **findings,
        },
    )
    width = max(len(n) for n in times)
    print(f"{command}: {first_s:.1f} s from nothing (budget {budget} s), rerun {rerun_s:.1f} s "
          f"({100 * rerun_s / first_s:.1f}% of it, every step skipped: {rerun_skipped_all})")  # fmt: skip
    for name, t in times.items():
        print(f"  {name.ljust(width)}  {t['stage']:<18} {t['wall_s'] or 0:8.1f} s")
    print(f"  {'(runner)'.ljust(width)}  {'':<18} {first_s - stages_s:8.1f} s")
    for line in findings.get("what_changed") or []:
        print(line)
    return common.write_rows(args.out, [result])


if __name__ == "__main__":
    sys.exit(main())
