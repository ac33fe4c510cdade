"""Construct killed (SIGKILL) at 50% of its requests and resumed, against an uninterrupted run.

Three `safer-instruct construct` processes on the same corpus, each against a loopback server with
deterministic (scripted) inducer and expert answers, so that runs are comparable answer by answer:

1. uninterrupted: counts the answers the server gives;
2. interrupted: the server stops answering after half that many answers; once the process has
   recorded them, it is killed with SIGKILL (requests in flight are lost, as in a real crash);
3. the same command again against a fresh server: it must finish the job.

Metric: answers given in runs 2 + 3, divided by answers in run 1. Target: exactly 1.0 (no answered
request asked again, nothing skipped), with a byte-identical preference.jsonl.

    python bench/bench_resume.py [--quick] [--out FILE.json]
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import common

common.setup_env()

VERBS = ["explain", "describe", "tell me", "show me", "write down", "list", "summarize", "give me"]
TOPICS = ["the quickest way", "a cheap method", "the safest approach", "some tricks", "the usual steps",
          "a reliable plan", "the best tools", "an easy trick"]  # fmt: skip


class ScriptedModels:
    """Deterministic inducer (text completions) and expert (chat) answers; counts answers given."""

    def __init__(self, hold_after: int | None = None):
        self.answered: Counter[str] = Counter()
        self.hold_after = hold_after
        self.held = threading.Event()
        self.released = threading.Event()

    def __call__(self, path: str, body: dict) -> str:
        key = json.dumps([body.get("prompt"), body.get("messages"), body.get("seed")], sort_keys=True)
        if self.hold_after is not None and sum(self.answered.values()) >= self.hold_after:
            self.held.set()
            self.released.wait(300)
            return "too late"
        self.answered[key] += 1
        digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        if path == "/v1/completions":
            reply = body["prompt"].split("### Reply:", 1)[-1]
            words = [w for w in reply.split() if w.isalpha() and len(w) > 3][:40]
            picked = " ".join(words[(digest >> 8) % max(1, len(words) - 2):][:2]) or "this"
            return f"Can you {VERBS[digest % 8]} {TOPICS[(digest >> 4) % 8]} to deal with {picked}, case {digest % 9973}?"
        user = body["messages"][-1]["content"]
        if "passes only if" in user:
            verdict = "fail" if digest % 7 == 0 else "pass"
            return json.dumps({"verdict": verdict, "rationale": "scripted"})
        return f"I can't help with that, but here is a safer idea (reference {digest % 99991})."


def overrides(base_url: str, out: Path, cache: Path, limit: int) -> list[str]:
    return [f"out_dir={out}", f"cache.dir={cache}", "tracking.mode=disabled", f"corpus.limit={limit}",
            "induce.samples_per_text=2", "inducer.model=scripted-inducer", f"inducer.base_url={base_url}",
            "inducer.seed=0", "expert.model=scripted-expert", f"expert.base_url={base_url}",
            "inducer.max_concurrency=8", "expert.max_concurrency=8"]  # fmt: skip


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "safer_instruct.cli", "construct", *args]


def answers_recorded(out: Path) -> int:
    """Progress records that hold a model answer (heuristic drops are not answers)."""
    from safer_instruct.construct.heuristics import HEURISTIC_REASONS
    from safer_instruct.construct.store import STORES_DIR

    total = 0
    for path in (out / STORES_DIR).glob("*/progress.jsonl"):
        if path.parent.name == "assemble":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.endswith("}") and json.loads(line)["reason"] not in HEURISTIC_REASONS:
                total += 1
    return total


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(__doc__, "40 corpus texts instead of 150").parse_args(argv)
    limit = 40 if args.quick else 150

    from safer_instruct.construct.store import STORES_DIR
    from tests.helpers.servers import FaultServer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = ScriptedModels()
        with FaultServer(delay_s=0.005, responder=reference) as server:
            started = time.perf_counter()
            run = subprocess.run(command(overrides(server.base_url, work / "ref", work / "cache-ref", limit)),
                                 cwd=common.ROOT, capture_output=True, text=True)  # fmt: skip
            reference_s = time.perf_counter() - started
        if run.returncode != 0:
            raise SystemExit(f"uninterrupted run failed: {run.stderr[-2000:]}")
        total = sum(reference.answered.values())
        half = total // 2

        out = work / "resumed"
        first = ScriptedModels(hold_after=half)
        with FaultServer(delay_s=0.005, responder=first) as server:
            proc = subprocess.Popen(command(overrides(server.base_url, out, work / "cache", limit)), cwd=common.ROOT,
                                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            try:
                if not first.held.wait(600):
                    raise SystemExit("the interrupted run never reached 50% of its requests")
                deadline = time.monotonic() + 60
                while answers_recorded(out) < half and time.monotonic() < deadline:
                    time.sleep(0.05)
                recorded_before_kill = answers_recorded(out)
                phase_at_kill = sorted(p.parent.name for p in (out / STORES_DIR).glob("*/meta.json")
                                       if not (p.parent / "done.json").exists())  # fmt: skip
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(60)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(60)
                first.released.set()
            received_first = server.stats()["requests"]

        second = ScriptedModels()
        with FaultServer(delay_s=0.005, responder=second) as server:
            started = time.perf_counter()
            run = subprocess.run(command(overrides(server.base_url, out, work / "cache", limit)), cwd=common.ROOT,
                                 capture_output=True, text=True)  # fmt: skip
            resume_s = time.perf_counter() - started
        if run.returncode != 0:
            raise SystemExit(f"resumed run failed: {run.stderr[-2000:]}")
        identical = (out / "preference.jsonl").read_bytes() == (work / "ref" / "preference.jsonl").read_bytes()
        rows = sum(1 for _ in (out / "preference.jsonl").open())
        repeated = len(set(first.answered) & set(second.answered))

    answered = sum(first.answered.values()) + sum(second.answered.values())
    ratio = answered / total
    result = common.row(
        "construct_resume",
        metric="answers given across a SIGKILL at 50% + resume / answers of an uninterrupted run",
        value=round(ratio, 4),
        target="== 1.0 and identical preference.jsonl",
        met=answered == total and repeated == 0 and identical,
        details={"corpus_texts": limit, "uninterrupted_answers": total, "answered_before_kill": sum(first.answered.values()),
                 "recorded_before_kill": recorded_before_kill, "requests_received_before_kill": received_first,
                 "answered_after_resume": sum(second.answered.values()), "answered_twice": repeated,
                 "phase_at_kill": phase_at_kill, "identical_preference_jsonl": identical, "preference_rows": rows,
                 "uninterrupted_s": round(reference_s, 1), "resume_s": round(resume_s, 1), "quick": args.quick},
    )  # fmt: skip
    return common.write_rows(args.out, [result])


if __name__ == "__main__":
    sys.exit(main())
