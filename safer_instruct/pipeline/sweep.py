"""One report over the points of a sweep (`safer-instruct run experiment=X -m train.beta=0.05,0.1`).

Each point of a Hydra multirun is a whole experiment in `<sweep dir>/<n>/`, with `sweep_point.json`
naming its overrides. When the sweep ends (`on_multirun_end`, with any Hydra launcher: the basic one
here, submitit on Slurm) the runs that each point's report step compared are collected into one
run of the `report` stage in `<sweep dir>/report/` (the points' report config, over all their runs):
a step shared by all points (the base model's evaluation) appears once, a step of one point appears
under the point's overrides, e.g. `train.beta=0.05 eval_dpo`. Also runnable by hand: `python -m safer_instruct.pipeline.sweep DIR`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from safer_instruct.errors import SaferInstructError
from safer_instruct.io import atomic_write_text
from safer_instruct.paths import PROJECT_ROOT
from safer_instruct.pipeline import state
from safer_instruct.pipeline.runner import SWEEP_POINT_FILE
from safer_instruct.pipeline.summary import markdown_table, report_table
from safer_instruct.stages import CONFIG_FILE, config_file_args

POINTS_DIR = "points"  # labelled links to each point's own runs, so the report's rows say which point
REPORT_DIR = "report"


def point_files(sweep_dir: Path) -> list[Path]:
    """The `sweep_point.json` of each point of a sweep, in point order (0, 1, ..., 10)."""
    return sorted(sweep_dir.glob(f"*/{SWEEP_POINT_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name))


def point_labels(overrides: list[list[str]]) -> list[str]:
    """Each point's label: the overrides that differ between points (the swept values)."""
    common = set.intersection(*(set(o) for o in overrides)) if len(overrides) > 1 else set()
    labels = []
    for point in overrides:
        label = ",".join(o for o in point if o not in common and not o.startswith(("hydra/", "hydra.")))
        labels.append(re.sub(r"[^A-Za-z0-9_.,=+-]+", "_", label) or "default")
    return labels


def collect_points(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Finished points ({label, exp_dir, report_config}) and the problems of unfinished ones."""
    points, problems = [], []
    for point_file in point_files(sweep_dir):
        exp_dir = point_file.parent
        point = json.loads(point_file.read_text())
        plan = json.loads((exp_dir / "experiment.json").read_text())
        report_step = plan.get("report_step")
        if not report_step:
            problems.append(f"{exp_dir}: the experiment has no report step")
            continue
        step = plan["steps"][report_step]
        if not state.is_complete(Path(step["dir"]), step["fingerprint"], tuple(step["outputs"])):
            problems.append(f"{exp_dir}: step '{report_step}' is not complete")
            continue
        points.append({"overrides": point["overrides"], "exp_dir": exp_dir, "report_config": Path(step["dir"]) / CONFIG_FILE})
    for point, label in zip(points, point_labels([p["overrides"] for p in points]), strict=True):
        point["label"] = label
    return points, problems


def sweep_report_config(sweep_dir: Path, points: list[dict[str, Any]]) -> DictConfig:
    """The config of one `report` over every point's runs: shared ones once, own ones labelled.

    A run (a step's or a group's folder) is shared when every point has the same completed steps in
    it (same fingerprints), e.g. the base model's evaluations: it is reported once, from point 0.
    """
    configs = [OmegaConf.load(point["report_config"]) for point in points]
    per_point = [[Path(str(run)) for run in cfg.runs] for cfg in configs]
    links = sweep_dir / POINTS_DIR
    links.mkdir(parents=True, exist_ok=True)
    runs: list[str] = []
    for index, run in enumerate(per_point[0]):
        same = [p[index] for p in per_point if len(p) > index and p[index].name == run.name]
        identities = {state.fingerprints_under(r) for r in same}
        if len(same) == len(points) > 1 and len(identities) == 1:
            runs.append(str(run))
            continue
        for point, path in zip(points, same, strict=False):
            link = links / f"{point['label']} {path.name}"
            if link.is_symlink():
                link.unlink()
            link.symlink_to(path.resolve(), target_is_directory=True)
            runs.append(str(link))
    report = configs[0]  # the points' report settings (title, notes, ...), over the runs of them all
    report.runs = runs
    report.out_dir = str(sweep_dir / REPORT_DIR)
    return report


def build_sweep_report(sweep_dir: Path) -> Path:
    points, problems = collect_points(sweep_dir)
    if problems or not points:
        raise SaferInstructError(
            f"sweep {sweep_dir}: cannot report yet: " + ("; ".join(problems) or "no finished points")
        )
    report_dir = sweep_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    config_file = report_dir / CONFIG_FILE
    atomic_write_text(config_file, OmegaConf.to_yaml(sweep_report_config(sweep_dir, points)))
    out = subprocess.run([sys.executable, "-m", "safer_instruct.cli", "report", *config_file_args(config_file)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True)  # fmt: skip
    (report_dir / "stage.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise SaferInstructError(f"sweep report failed (exit {out.returncode}); log: {report_dir / 'stage.log'}")
    table = markdown_table(report_table(report_dir))
    print(f"\nsweep of {len(points)} points: {report_dir / 'report.md'}\n" + "\n".join(table), flush=True)
    return report_dir / "report.md"


class SweepReport(Callback):
    """Hydra callback (conf/run.yaml): build the sweep's report when a multirun of `run` ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run") or config.launcher.name != "local":
            return  # nothing ran (dry run), or the points only submitted jobs (launcher=slurm)
        build_sweep_report(Path(str(config.hydra.sweep.dir)).resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safer_instruct.pipeline.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        build_sweep_report(args.sweep_dir.resolve())
    except SaferInstructError as err:
        print(f"safer-instruct: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
