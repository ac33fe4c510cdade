"""Judging throughput: `eval harmlessness` on 900 pre-generated answers against a sequential loop.

A loopback OpenAI-compatible judge answers every request after a fixed 100 ms with a scripted verdict
(the request handling of tests/helpers/servers.py, run in a child process of its own so that it shares
no CPU time slice or GIL with the client being measured). Measured side by side in one run, over the same answers and judging template:

* a plain sequential loop with the `openai` SDK: one judge request after another, verdicts read with
  the project's parser;
* the whole `safer-instruct eval harmlessness` stage (pre-generated answers mode, `judge=endpoint`)
  with the judge preset's own concurrency (`max_concurrency` of conf/llm/openai.yaml, 16), on a fresh
  cache, including reading the file, bootstrap CIs and writing the outputs.

The answers are the release's `alpaca` column of test_set.csv when the release folder has it (900 answers),
otherwise 900 synthetic ones.

    python bench/bench_judge.py [--quick] [--out FILE.json]

Row `judge_concurrency`: speedup of the stage over the loop (target >= 10x; the ideal is the
concurrency). Absolute times are in `details` (noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

common.setup_env()

from safer_instruct.cli import main as cli  # noqa: E402
from safer_instruct.config import compose, to_plain  # noqa: E402
from safer_instruct.evaluation import judge  # noqa: E402
from safer_instruct.evaluation.prompts import load_responses  # noqa: E402
from safer_instruct.prompts import PromptTemplate  # noqa: E402
from safer_instruct.verdict import JUDGE_VERDICTS, parse_verdict  # noqa: E402
from tests.helpers.servers import _FaultCore, _serve_connection  # noqa: E402

DELAY_S = 0.1
TARGET = 10.0


def scripted_verdict(path: str, body: dict) -> str:
    """Harmless when the answer refuses, harmful otherwise (a deterministic stand-in for a real judge)."""
    answer = body["messages"][-1]["content"].split("[RESPONSE]\n", 1)[-1].lower()
    verdict = "harmless" if ("cannot" in answer or "sorry" in answer) else "harmful"
    return json.dumps({"verdict": verdict, "rationale": "scripted"})


class JudgeServerProcess:
    """The scripted judge in a child process (`bench_judge.py --serve`); stops when we close its stdin."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> JudgeServerProcess:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", "--delay", str(self.delay_s)],
                                     cwd=common.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.__exit__()
            raise SystemExit(f"judge server did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
        return self

    def requests(self) -> int:
        import urllib.request

        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_stats", timeout=10) as resp:
            return json.loads(resp.read())["requests"]

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def serve(delay_s: float) -> None:
    core = _FaultCore(delay_s=delay_s, responder=scripted_verdict)

    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: _serve_connection(core, r, w), "127.0.0.1", 0)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        server.close()

    asyncio.run(run())


def answers_file(n: int, tmp: Path) -> tuple[Path, str]:
    """A JSONL of n answers (prompt, response, source); from the release when it is here."""
    release_test_set = common.RELEASE_DIR / "test_set.csv"
    if release_test_set.is_file():
        items = load_responses({"path": str(release_test_set), "column": "alpaca"})
        rows, origin = [(i.prompt, i.response, i.source) for i in items], "release test_set.csv, alpaca column"
    else:
        rows = [(f"harmful request {i}", "I cannot help with that." if i % 3 else f"Sure: step {i}", "synthetic")
                for i in range(n)]  # fmt: skip
        origin = "synthetic answers (release not found)"
    rows = (rows * (n // len(rows) + 1))[:n]
    path = tmp / "answers.jsonl"
    # Unique prompts so that no request is a cache hit of another.
    path.write_text("".join(json.dumps({"prompt": f"{p} [#{k}]", "response": r, "source": s}) + "\n"
                            for k, (p, r, s) in enumerate(rows)))  # fmt: skip
    return path, origin


def sequential(base_url: str, path: Path, template: PromptTemplate) -> tuple[float, dict[str, int]]:
    import openai

    items = load_responses({"path": str(path)})
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
    counts = {"harmless": 0, "harmful": 0, "unjudged": 0}
    started = time.perf_counter()
    for item in items:
        messages = list(judge.messages(template, prompt=item.prompt, response=item.response))
        reply = client.chat.completions.create(model="bench-judge", messages=messages, max_tokens=256, temperature=0)
        verdict = parse_verdict(reply.choices[0].message.content, JUDGE_VERDICTS).verdict
        counts[verdict or "unjudged"] += 1
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed, counts


def stage(base_url: str, path: Path, tmp: Path) -> tuple[float, dict]:
    out = tmp / "stage"
    args = ["eval", "harmlessness", f"responses.path={path}", "judge=endpoint", f"judge.base_url={base_url}",
            "judge.model=bench-judge", f"cache.dir={tmp / 'cache'}", f"out_dir={out}"]  # fmt: skip
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli(args)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"eval harmlessness failed with exit code {code}")
    return elapsed, json.loads((out / "harmlessness.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, "90 answers instead of 900")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # child: the judge server
    parser.add_argument("--delay", type=float, default=DELAY_S, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.delay)
        return 0
    n = 90 if args.quick else 900
    cfg = compose("eval_harmlessness", ["judge=endpoint", "judge.base_url=x", "judge.model=x"])
    template = judge.load_template(to_plain(cfg.judge_template), "judge_template", "single")
    concurrency = int(cfg.judge.max_concurrency)
    with tempfile.TemporaryDirectory() as tmp_name, JudgeServerProcess(DELAY_S) as server:
        tmp = Path(tmp_name)
        path, origin = answers_file(n, tmp)
        stage_s, result = stage(server.base_url, path, tmp)
        seq_s, seq_counts = sequential(server.base_url, path, template)
        requests_seen = server.requests()
    ours = {"harmless": result["n_harmless"], "harmful": result["n_harmful"], "unjudged": result["n_unjudged"]}
    speedup = seq_s / stage_s
    result = common.row(
        "judge_concurrency",
        metric="speedup of eval harmlessness over a sequential judge loop",
        value=round(speedup, 2),
        target=f">= {TARGET:g}x (ideal {concurrency}x)",
        met=speedup >= TARGET and ours == seq_counts,
        details={
            "answers": n, "answers_from": origin, "judge_delay_s": DELAY_S, "concurrency": concurrency,
            "sequential_s": round(seq_s, 2), "stage_s": round(stage_s, 2),
            "stage_judge_phase_s": round(result["llm_stats"]["judge"]["elapsed_s"], 2),
            "efficiency_vs_ideal": round(speedup / concurrency, 3), "quick": args.quick,
            "verdicts_stage": ours, "verdicts_sequential": seq_counts, "same_verdicts": ours == seq_counts,
            "server_requests": requests_seen,
        },
    )  # fmt: skip
    return common.write_rows(args.out, [result])


if __name__ == "__main__":
    sys.exit(main())
