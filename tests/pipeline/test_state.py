"""Step completeness, stale outputs, and steps shared between sweep points."""

from __future__ import annotations

import json
import threading
import time

from safer_instruct.pipeline import state


def finished_step(path, fingerprint="f1", files=("model/config.json", "metrics.jsonl")):
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(name)
    state.write_marker(path, fingerprint, wall_s=1.0)
    return path


def test_complete_needs_the_same_fingerprint_and_every_declared_output(tmp_path):
    step = finished_step(tmp_path / "sft")
    outputs = ("model/config.json", "metrics.jsonl", "model/*.json")
    assert state.is_complete(step, "f1", outputs)
    assert not state.is_complete(step, "f2", outputs)
    (step / "metrics.jsonl").unlink()
    assert not state.is_complete(step, "f1", outputs)
    assert state.missing_outputs(step, outputs) == ["metrics.jsonl"]


def test_a_rerun_keeps_its_own_partial_state_and_moves_a_foreign_one_aside(tmp_path):
    exp = tmp_path / "exp"
    step = exp / "dpo"
    assert state.prepare_step_dir(step, "f1", exp) is None
    (step / "checkpoint-2").mkdir()  # a failed run left a checkpoint: the same step resumes from it
    assert state.prepare_step_dir(step, "f1", exp) is None
    assert (step / "checkpoint-2").is_dir()
    moved = state.prepare_step_dir(step, "f2", exp)  # other arguments: not its state to resume from
    assert moved is not None and (moved / "checkpoint-2").is_dir() and moved.parent == exp / ".stale"
    assert not (step / "checkpoint-2").exists()
    assert json.loads((step / state.STARTED).read_text())["fingerprint"] == "f2"


def test_a_reused_step_links_to_the_original_and_a_rerun_never_writes_into_it(tmp_path):
    original = finished_step(tmp_path / "sweep" / "0" / "reverse")
    mirror = tmp_path / "sweep" / "1" / "reverse"
    state.link_reused(mirror, original)
    assert state.is_reused(mirror) and not state.is_reused(original)
    assert state.is_complete(mirror, "f1", ("model/config.json",))
    assert (mirror / "model" / "config.json").read_text() == "model/config.json"
    # Forced to run again in point 1: the links go aside, the original stays as it was.
    state.prepare_step_dir(mirror, "f1", tmp_path / "sweep" / "1")
    assert not state.is_reused(mirror) and not (mirror / "model").exists()
    assert state.is_complete(original, "f1", ("model/config.json", "metrics.jsonl"))


def test_registry_lock_makes_a_second_point_wait_then_find_the_step(tmp_path):
    registry = state.StepRegistry(tmp_path)
    step = tmp_path / "0" / "construct"
    found = []

    def second_point():
        time.sleep(0.1)
        with registry.lock("fp"):
            found.append(registry.find("fp", ("preference.jsonl",)))

    thread = threading.Thread(target=second_point)
    with registry.lock("fp"):
        thread.start()
        time.sleep(0.4)  # the first point is still computing: the second must not see a half step
        assert found == []
        finished_step(step, "fp", files=("preference.jsonl",))
        registry.register("fp", step)
    thread.join(timeout=10)
    assert found == [step.resolve()]
    assert state.fingerprints_under(tmp_path) == frozenset({"fp"})
