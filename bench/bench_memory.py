"""Peak memory of `safer-instruct construct` over 1,000 and over 10,000 corpus texts.

Every phase streams: the corpus is read row by row, requests are pulled as the LLM layer has room,
progress is appended to disk, outputs are sorted by (id, file offset) rather than by loading rows,
and the datasets folder is written through Arrow. So the peak resident memory of the construct
process should not grow with the corpus. Both runs use the same loopback server with instant
scripted answers (so the model's own memory is not part of the measurement), all five phases, k = 1.

Metric: peak RSS (10,000 texts) / peak RSS (1,000 texts), read from the finished process's rusage.
Target: <= 1.2 (flat).

    python bench/bench_memory.py [--quick] [--out FILE.json]      # --quick: 300 vs 3,000 texts
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

common.setup_env()

WORDS = ("people", "never", "should", "trust", "them", "because", "every", "time", "they", "come", "here",
         "things", "get", "worse", "for", "everyone", "around", "and", "nobody", "does", "anything", "about",
         "it", "so", "maybe", "someone", "ought", "to", "teach", "lesson", "that", "will", "remember")  # fmt: skip


def write_corpus(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            text = f"Post {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90)))
            handle.write(json.dumps({"text": text, "category": f"c{i % 5}"}) + "\n")


SYLLABLES = ("ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "pe", "du", "go", "fa")


def responder(path: str, body: dict) -> str:
    """Instant, distinct answers: an instruction per text, pass verdicts, a short chosen response."""
    if path == "/v1/completions":
        rng = random.Random(body["prompt"])
        words = ["".join(rng.choice(SYLLABLES) for _ in range(3)) for _ in range(4)]
        return f"How would you write about the {words[0]} {words[1]} to upset {words[2]} and {words[3]}?"
    user = body["messages"][-1]["content"]
    if "passes only if" in user:
        return '{"verdict": "pass", "rationale": "scripted"}'
    return "I would rather not write that; here is a kinder way to say it."


def run_once(server_url: str, work: Path, n: int) -> dict:
    corpus = work / f"corpus-{n}.jsonl"
    write_corpus(corpus, n)
    out = work / f"out-{n}"
    args = [f"out_dir={out}", f"cache.dir={work / f'cache-{n}'}", "tracking.mode=disabled", "corpus=file",
            f"corpus.path={corpus}", "induce.samples_per_text=1", "inducer.model=scripted-inducer",
            f"inducer.base_url={server_url}", "expert.model=scripted-expert", f"expert.base_url={server_url}",
            "inducer.max_concurrency=16", "expert.max_concurrency=16"]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "safer_instruct.cli", "construct", *args], cwd=common.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"construct over {n} texts failed: {stderr.decode()[-2000:]}")
    stats = json.loads((out / "stats.json").read_text())
    return {"texts": n, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(seconds, 1),
            "preference_rows": stats["phases"]["assemble"]["out"],
            "requests": sum(s["requests"] for s in stats["llm"].values())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(__doc__, "300 vs 3,000 texts").parse_args(argv)
    small, large = (300, 3000) if args.quick else (1000, 10000)

    from tests.helpers.servers import FaultServer

    # The server runs in a thread of this process; construct runs in its own (measured) process.
    with tempfile.TemporaryDirectory() as tmp, FaultServer(responder=responder) as server:
        runs = [run_once(server.base_url, Path(tmp), n) for n in (small, large)]
    ratio = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    result = common.row(
        "construct_memory",
        metric=f"peak RSS of construct over {large} texts / over {small} texts",
        value=round(ratio, 3),
        target="<= 1.2 (flat)",
        met=ratio <= 1.2,
        details={"runs": runs, "growth_mb": round(runs[1]["peak_rss_mb"] - runs[0]["peak_rss_mb"], 1),
                 "quick": args.quick},
    )  # fmt: skip
    return common.write_rows(args.out, [result])


if __name__ == "__main__":
    sys.exit(main())
