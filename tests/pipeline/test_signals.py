"""A SIGTERM to `safer-instruct run` (plain `kill`, a batch system) stops the running stage too."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from safer_instruct.pipeline.state import MARKER
from tests.pipeline.helpers import ROOT


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_sigterm_to_the_runner_stops_the_running_stage(tmp_path):
    exp = tmp_path / "exp"
    runner = subprocess.Popen(
        [sys.executable, "-m", "safer_instruct.cli", "run", "experiment=smoke", f"out_dir={exp}",
         f"cache.dir={tmp_path / 'cache'}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        stage = _wait_for(lambda: psutil.Process(runner.pid).children(), 120, "the first stage to start")[0]
        # Let the stage get going (past imports), so that it is stopped mid-work, not before it began.
        _wait_for(lambda: (exp / "reverse" / "stage.log").exists(), 60, "the stage log")
        time.sleep(3)
        runner.send_signal(signal.SIGTERM)
        code = runner.wait(timeout=90)
        assert code == 128 + signal.SIGTERM
        assert not stage.is_running() or stage.status() == psutil.STATUS_ZOMBIE
        # The stage did not complete, so a rerun would run it again rather than skip it.
        assert not (exp / "reverse" / MARKER).exists()
    finally:
        if runner.poll() is None:
            runner.kill()
