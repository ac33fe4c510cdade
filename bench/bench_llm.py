"""LLM access layer throughput: concurrency against a plain sequential loop, and the cache-hit path.

A loopback OpenAI-compatible server (tests/helpers/servers.py, in its own process) answers every
request after a fixed delay (100 ms). Measured side by side in one run:

* a plain sequential loop with the `openai` SDK, one request after another;
* the same number of requests through `LLMSession` at `max_concurrency=32` (ideal: 32x faster),
  on 3 distinct request sets, the median counting;
* the same requests again from a fresh session over the same cache (ideal: no request at all).

    python bench/bench_llm.py [--quick] [--out FILE.json]

Rows: `llm_concurrency` (speedup, target >= 25.6 = 80% of the ideal 32x) and `llm_cache` (cached
rerun time / uncached time, target < 2%). Absolute times are in `details` (noisy on a shared machine).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import common

common.setup_env()

from safer_instruct.llm import ChatRequest, LLMSession  # noqa: E402
from tests.helpers.servers import FaultServerProcess  # noqa: E402


def requests(n: int, tag: str) -> list[ChatRequest]:
    return [ChatRequest(id=f"{tag}{i}", messages=({"role": "user", "content": f"{tag} question {i}"},)) for i in range(n)]


def sequential(server: FaultServerProcess, items: list[ChatRequest], warmup: int = 2) -> float:
    """A plain loop with the SDK's synchronous client, warmed up (connection open) before timing."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)

    def ask(request: ChatRequest) -> None:
        response = client.chat.completions.create(model="bench", messages=list(request.messages), max_tokens=16)
        assert response.choices[0].message.content

    for request in requests(warmup, "warm-seq"):
        ask(request)
    started = time.perf_counter()
    for request in items:
        ask(request)
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def through_layer(server: FaultServerProcess, batches: list[list[ChatRequest]], cache_dir: str, concurrency: int,
                  warmup: int = 0) -> tuple[list[float], dict]:  # fmt: skip
    """`generate` over each batch in one session (warmed up with `warmup` other requests, not timed)."""
    role = server.role(model="bench", max_concurrency=concurrency, max_tokens=16, timeout_s=30)
    times = []
    with LLMSession(roles={"bench": role}, cache_dir=cache_dir, progress=False) as session:
        if warmup:
            list(session.role("bench").generate(requests(warmup, "warm-layer"), phase="warmup"))
        for items in batches:
            started = time.perf_counter()
            results = list(session.role("bench").generate(items, phase="bench"))
            times.append(time.perf_counter() - started)
            assert len(results) == len(items) and all(r.ok for r in results)
        stats = session.role("bench").stats("bench")
    return times, stats


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, "96 requests instead of 500")
    parser.add_argument("--requests", type=int, default=None, help="requests per run (default 500, quick 96)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.1, help="server delay per request, seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed layer runs (the median counts)")
    args = parser.parse_args(argv)
    n = args.requests or (96 if args.quick else 500)
    ideal = float(args.concurrency)
    target_ratio = 0.8 * ideal

    with FaultServerProcess(delay_s=args.delay) as server, tempfile.TemporaryDirectory() as cache_dir:
        # Both sides are timed warm (imports done, connections open): steady-state throughput.
        load_before = os.getloadavg()[0]
        seq_s = sequential(server, requests(n, "seq"))
        # The layer is timed on `repeats` distinct sets of n requests; the median counts (the machine is
        # shared, and the CPU-bound side suffers more from a neighbour's burst than the sleeping loop).
        layer_sets = [requests(n, f"layer{k}-") for k in range(args.repeats)]
        before = server.stats()["requests"]
        layer_times, layer_stats = through_layer(server, layer_sets, cache_dir, args.concurrency,
                                                 warmup=args.concurrency)  # fmt: skip
        sent = server.stats()["requests"] - before - args.concurrency
        layer_s = statistics.median(layer_times)
        # The rerun is a fresh session over the same cache (what a resumed run does), timed cold.
        median_set = layer_sets[layer_times.index(sorted(layer_times)[len(layer_times) // 2])]
        (cached_s,), cached_stats = through_layer(server, [median_set], cache_dir, args.concurrency)
        sent_on_rerun = server.stats()["requests"] - before - args.concurrency - sent
        max_inflight = server.stats()["max_inflight"]

    ratio = seq_s / layer_s
    cache_fraction = cached_s / layer_s
    shared = {"requests": n, "server_delay_s": args.delay, "quick": args.quick,
              "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count()}
    rows = [
        common.row(
            "llm_concurrency",
            metric=f"speedup of LLMSession at max_concurrency={args.concurrency} over a sequential loop",
            value=round(ratio, 2),
            target=f">= {target_ratio:g}x (80% of the ideal {ideal:g}x)",
            met=ratio >= target_ratio,
            details={**shared, "sequential_s": round(seq_s, 3), "layer_s": round(layer_s, 3),
                     "ideal_layer_s": round(n * args.delay / ideal, 3), "efficiency": round(ratio / ideal, 3),
                     "layer_runs_s": [round(t, 3) for t in layer_times], "requests_sent_all_runs": sent,
                     "max_inflight_at_server": max_inflight, "layer_retries": layer_stats["retries"]},
        ),  # fmt: skip
        common.row(
            "llm_cache",
            metric="fully cached rerun time / uncached time",
            value=round(cache_fraction, 5),
            target="< 0.02",
            met=cache_fraction < 0.02 and sent_on_rerun == 0,
            details={**shared, "uncached_s": round(layer_s, 3), "cached_s": round(cached_s, 4),
                     "requests_sent_on_rerun": sent_on_rerun, "cache_hits": cached_stats["cache_hits"]},
        ),  # fmt: skip
    ]
    return common.write_rows(args.out, rows)


if __name__ == "__main__":
    raise SystemExit(main())
