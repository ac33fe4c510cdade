"""Instruction induction over the same texts with SmolLM2-135M on CPU: the construct pipeline against
a plain loop of one `generate` call per text, side by side in one run.

* pipeline: `safer-instruct construct phases=[induce]` with the inducer in process (`llm@inducer=inprocess`:
  requests gathered, sorted by prompt length, generated in left-padded batches), on a fresh cache;
* baseline: load the same model, then for each text `model.generate` on the same reversed prompt with
  the same settings (greedy, same max new tokens, same stop strings).

Both sides include loading the model, and both use the same number of torch threads (default 1: on a
shared 2-core machine, several processes each spinning 2 OpenMP threads slow each other down by 10x).
Metric: baseline time / pipeline time. Target: >= 3x.

    python bench/bench_induction.py [--quick] [--out FILE.json] [--texts 64] [--max-tokens 32] [--threads 1]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common

common.setup_env()

MODEL = "kit:smollm2-135m"
STOP = ["\n###", "### Reply", "### Request", "### Response"]


def corpus_texts(n: int) -> list[dict]:
    """The first n texts of at most 400 characters of the pyrit harm corpus (short posts, like the
    paper's X/Reddit texts: generation, not prompt reading, dominates)."""
    from safer_instruct.data.corpus import read_corpus

    texts = []
    for text in read_corpus({"path": "pyrit:harm", "on_bad_row": "quarantine", "max_chars": 400}):
        texts.append({"text": text.text, "category": text.category})
        if len(texts) == n:
            break
    return texts


def baseline(texts: list[dict], max_tokens: int) -> dict:
    """One generate call per text, as a simple script would do it."""
    import torch

    from safer_instruct.formatting import render_reverse_prompt, reverse_template
    from safer_instruct.model_kit import load_causal_lm, load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(MODEL)
    model = load_causal_lm(MODEL, dtype="float32").eval()
    template = reverse_template()
    loaded = time.perf_counter()
    new_tokens = 0
    with torch.inference_mode():
        for item in texts:
            enc = tokenizer(render_reverse_prompt(item["text"], template), return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, stop_strings=STOP,
                                 tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            new_tokens += out.shape[1] - enc["input_ids"].shape[1]
    ended = time.perf_counter()
    return {"seconds": ended - started, "load_s": loaded - started, "generate_s": ended - loaded,
            "new_tokens": int(new_tokens)}  # fmt: skip


def pipeline(texts: list[dict], max_tokens: int, batch_size: int, work: Path) -> dict:
    from safer_instruct.config import compose
    from safer_instruct.construct.pipeline import run_construct

    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    overrides = [
        f"out_dir={work / 'out'}", f"cache.dir={work / 'cache'}", "tracking.mode=disabled", "phases=[induce]",
        "corpus=file", f"corpus.path={corpus}", "induce.samples_per_text=1",
        "llm@inducer=inprocess", f"inducer.model={MODEL}", "inducer.temperature=0", f"inducer.max_tokens={max_tokens}",
        f"inducer.batch_size={batch_size}", "inducer.max_concurrency=64", "inducer.dtype=float32",
        "expert.model=unused",
    ]  # fmt: skip
    started = time.perf_counter()
    stats = run_construct(compose("construct", overrides), work / "out")
    seconds = time.perf_counter() - started
    llm = stats["llm"]["induce"]
    return {"seconds": seconds, "new_tokens": int(llm["completion_tokens"]), "requests": llm["requests"],
            "failures": llm["failures"], "induced": stats["phases"]["induce"]["out"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, "8 texts, 16 new tokens")
    parser.add_argument("--texts", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    args = parser.parse_args(argv)
    n = args.texts or (8 if args.quick else 64)
    max_tokens = args.max_tokens or (16 if args.quick else 32)
    # Before torch starts its thread pools (the in-process backend generates in a worker thread).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

    import torch

    torch.set_num_threads(args.threads)

    from safer_instruct.model_kit import resolve_model

    resolve_model(MODEL)  # convert the GGUF once, outside both timings
    texts = corpus_texts(n)
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline(texts, max_tokens)
        pipe = pipeline(texts, max_tokens, args.batch_size, Path(tmp))
    ratio = base["seconds"] / pipe["seconds"]
    result = common.row(
        "induction_throughput",
        metric=f"speedup of construct's induce over a generate-per-text loop ({n} texts, SmolLM2-135M, CPU)",
        value=round(ratio, 2),
        target=">= 3x",
        met=ratio >= 3.0,
        details={"texts": n, "max_new_tokens": max_tokens, "batch_size": args.batch_size,
                 "torch_threads": torch.get_num_threads(), "baseline": base, "pipeline": pipe,
                 "baseline_texts_per_s": round(n / base["seconds"], 3),
                 "pipeline_texts_per_s": round(n / pipe["seconds"], 3), "quick": args.quick},
    )  # fmt: skip
    return common.write_rows(args.out, [result])


if __name__ == "__main__":
    sys.exit(main())
