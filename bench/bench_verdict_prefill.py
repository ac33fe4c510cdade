"""How often does a small local model answer in the verdict format, with and without a verdict prefill?

Asks SmolLM2-135M-Instruct (kit:smollm2-135m, in process, greedy) the project's four verdict checks
with their real templates and code paths (construct's `VerdictTask`, the judge's request builders):
instruction filter, response filter, single-answer harmlessness judge, pairwise judge; n items each
from the public release (read in place), once without a prefill and once with the role's
`verdict_prefill`. Prints, per check and setting, the parse rate of `safer_instruct.verdict` (the one
strict parser) at the generation budget, the rate the same greedy answers would have at smaller
`max_tokens` (the answer cut to its first N tokens), and the verdicts among the parsed ones next to
what each item was built to be (a matched / mismatched pair, a refusal / the harmful text, a GPT-4 /
an Alpaca answer; `judge_clear`: the release's harmful texts / refusals as the answers).

    python bench/bench_verdict_prefill.py --n 12 --threads 1 [--judge-template PATH] [--answers FILE.json]
    python bench/bench_verdict_prefill.py --quick --out FILE.json   # 2 items, 16 tokens: a smoke check

Row `verdict_prefill_parse_rate`: the share of answers that parse with the prefill, all checks
together (target: above the share without it); `--answers` also writes every answer and its verdict.
Skips (and says so) where the release is not found. Answers are cached (`--cache`; a fresh temporary
cache in quick mode), so a rerun with other analysis settings generates nothing new.
`--position-probe` also asks whether the single judge's verdict follows the answer or the order in
which the verdict words are listed.

Measured on a shared 2-core CPU (n=12, 1 torch thread, max_tokens 64; parsed / 12 without -> with
the prefill `{"verdict": "`): instruction filter 4 -> 12, response filter 0 -> 11, harmlessness judge
0 -> 10 (release answers) and 1 -> 12 (plain harmful texts / refusals), pairwise judge 1 -> 11. Every
parsed verdict was the first word the format sentence lists (pass, harmless, A), whatever the item;
the position probe: "harmless" is more likely for 12/12 items as listed and 0/12 with the words
swapped, and the margin does not separate refusals from harmful texts (AUC 0.42 / 0.36). A few-shot
template (one harmful, one harmless example) did not change this (harmless for 11/11 and 12/12 parsed).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import common

common.setup_env()

from omegaconf import OmegaConf  # noqa: E402

from safer_instruct.construct.tasks import VerdictTask, load_template  # noqa: E402
from safer_instruct.evaluation import judge  # noqa: E402
from safer_instruct.evaluation.prompts import EvalItem  # noqa: E402
from safer_instruct.llm import LLMSession  # noqa: E402
from safer_instruct.model_kit import load_tokenizer  # noqa: E402
from safer_instruct.paths import CONF_DIR  # noqa: E402
from safer_instruct.prompts import PromptTemplate  # noqa: E402
from safer_instruct.verdict import FILTER_VERDICTS, parse_verdict  # noqa: E402

RELEASE_FILES = ("test_set.csv", "safer_instruct_hate.csv", "safer_instruct_self-harm.csv")
PREFILL = '{"verdict": "'
SETTINGS = ("none", "verdict")  # without, then with the prefill
CACHE = "/tmp/bench_verdict_prefill_cache"


def _read(name: str) -> list[dict]:
    with open(common.RELEASE_DIR / name, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def filter_items(n: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(instruction-filter rows, response-filter rows), each with `expected` pass/fail."""
    rows = [r for name in ("safer_instruct_hate.csv", "safer_instruct_self-harm.csv") for r in _read(name)
            if r["rejected"].strip() and len(r["rejected"]) < 500 and len(r["instruction"]) < 300]  # fmt: skip
    picked = rng.sample(rows, n)
    n_bad = n // 3
    instr, resp = [], []
    for i, row in enumerate(picked):
        other = picked[(i + 1) % n]
        mismatched = i < n_bad  # an instruction written for another text: should fail
        instr.append({"id": f"fi{i:02d}", "category": row["label"], "text": row["rejected"],
                      "instruction": other["instruction"] if mismatched else row["instruction"],
                      "expected": "fail" if mismatched else "pass"})  # fmt: skip
        swapped = i < n_bad  # the harmful text proposed as the preferred answer: should fail
        resp.append({"id": f"fr{i:02d}", "category": row["label"], "instruction": row["instruction"],
                     "chosen": row["rejected"] if swapped else row["chosen"],
                     "text": row["chosen"] if swapped else row["rejected"],
                     "expected": "fail" if swapped else "pass"})  # fmt: skip
    return instr, resp


def judge_items(n: int, rng: random.Random) -> tuple[list[EvalItem], dict[str, str], dict[str, str]]:
    """Items with a GPT-4 (first half) or an Alpaca answer, GPT-4 references for pairwise, and origins."""
    rows = [r for r in _read("test_set.csv") if 0 < len(r["gpt4"]) < 600 and 0 < len(r["alpaca"]) < 600]
    picked = rng.sample(rows, n)
    items, references, origin = [], {}, {}
    for i, row in enumerate(picked):
        column = "gpt4" if i < n // 2 else "alpaca"
        item = EvalItem(id=f"j{i:02d}", prompt=row["instruction"], source=row["label"], row=i + 2)
        item.response = row[column] if column == "gpt4" else row["alpaca"]
        items.append(item)
        references[item.id] = row["gpt4"] if column == "alpaca" else row["alpaca"]
        origin[item.id] = column
    return items, references, origin


def clear_judge_items(n: int, rng: random.Random) -> tuple[list[EvalItem], dict[str, str]]:
    """Items whose answer is plainly harmful (the release's rejected text: slurs, self-harm) for the
    first half, or a refusal (its chosen text) for the second half."""
    rows = [r for name in ("safer_instruct_hate.csv", "safer_instruct_self-harm.csv") for r in _read(name)
            if r["rejected"].strip() and len(r["rejected"]) < 400 and len(r["instruction"]) < 300
            and len(r["chosen"]) < 400]  # fmt: skip
    items, origin = [], {}
    for i, row in enumerate(rng.sample(rows, n)):
        harmful = i < n // 2
        item = EvalItem(id=f"c{i:02d}", prompt=row["instruction"], source=row["label"], row=i + 2)
        item.response = row["rejected"] if harmful else row["chosen"]
        items.append(item)
        origin[item.id] = "harmful" if harmful else "harmless"
    return items, origin


def truncated_parse(tokenizer, text: str, prefill: str | None, budget: int, allowed) -> bool:
    """Whether the answer cut to its first `budget` generated tokens still parses."""
    continuation = text[len(prefill) :] if prefill else text
    ids = tokenizer(continuation, add_special_tokens=False)["input_ids"][:budget]
    return parse_verdict((prefill or "") + tokenizer.decode(ids), allowed).parsed


def position_probe(items: list[EvalItem], origin: dict[str, str], template: PromptTemplate) -> None:
    """Does the judge's verdict follow the answer, or the order in which the verdict words are listed?

    For each item, log P("harmless") - log P("harmful") right after the prefill, with the format
    sentence listing "harmless" first (as the project's) and with the two words swapped; prints how
    often "harmless" wins, and the AUC of the margin for refusals against harmful texts (0.5: no signal).
    """
    import torch

    from safer_instruct.llm.chat import ChatRenderer
    from safer_instruct.model_kit import load_causal_lm

    tokenizer = load_tokenizer("kit:smollm2-135m")
    model = load_causal_lm("kit:smollm2-135m", dtype="float32").eval()
    renderer = ChatRenderer(tokenizer=tokenizer)

    def logprob(text: str, word: str) -> float:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(torch.tensor([ids + word_ids])).logits[0, :-1].float()
        logp = torch.log_softmax(logits, -1)
        return sum(logp[len(ids) - 1 + i, t].item() for i, t in enumerate(word_ids))

    listed = '"harmless" or "harmful"'
    for order, swap in (("harmless listed first", False), ("harmful listed first", True)):
        margins = []
        for item in items:
            messages = [dict(m) for m in judge.messages(template, prompt=item.prompt, response=item.response)]
            if swap:
                messages[-1]["content"] = messages[-1]["content"].replace(listed, '"harmful" or "harmless"')
            text = renderer.render(messages, PREFILL)
            margins.append((origin[item.id], logprob(text, "harmless") - logprob(text, "harmful")))
        refusals = [m for o, m in margins if o == "harmless"]
        harmful = [m for o, m in margins if o == "harmful"]
        auc = sum((a > b) + 0.5 * (a == b) for a in refusals for b in harmful) / (len(refusals) * len(harmful))
        print(f"position probe, {order}: 'harmless' more likely for {sum(m > 0 for _, m in margins)}/{len(margins)};"
              f" mean margin refusals {sum(refusals) / len(refusals):.2f}, harmful texts {sum(harmful) / len(harmful):.2f};"
              f" AUC {auc:.2f}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, "2 items per check, 16 new tokens, budget 8, a fresh cache")
    parser.add_argument("--n", type=int, default=None, help="items per check (default 12, quick 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=None, help="generation budget (default 64, quick 16)")
    parser.add_argument("--budgets", default=None, help="smaller budgets to parse at (default 32,48, quick 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", default="filter_instructions,filter_responses,judge,judge_clear,pairwise")
    parser.add_argument("--judge-template", default=str(CONF_DIR / "judge_template" / "harmlessness_v1.yaml"))
    parser.add_argument("--pairwise-template", default=str(CONF_DIR / "judge_template" / "pairwise_v1.yaml"))
    parser.add_argument("--filter-template-dir", default=str(CONF_DIR / "prompts"))
    parser.add_argument("--cache", default=None, help=f"answer cache (default {CACHE}, quick: a fresh one)")
    parser.add_argument("--answers", type=Path, default=None, help="write every answer and its verdict here (JSON)")
    parser.add_argument("--position-probe", action="store_true", help="also run `position_probe` on judge_clear items")
    args = parser.parse_args(argv)
    missing = [name for name in RELEASE_FILES if not (common.RELEASE_DIR / name).is_file()]
    if missing:
        reason = f"the release is not at {common.RELEASE_DIR} ({', '.join(missing)}; set SAFER_INSTRUCT_RELEASE)"
        return common.write_rows(args.out, [common.skipped("verdict_prefill_parse_rate", reason)])
    args.n = args.n or (2 if args.quick else 12)
    args.max_tokens = args.max_tokens or (16 if args.quick else 64)
    args.budgets = args.budgets or ("8" if args.quick else "32,48")
    with tempfile.TemporaryDirectory(prefix="bench-verdict-") as tmp:
        # Quick mode generates afresh (a smoke check of the whole path), not from a full run's answers.
        args.cache = args.cache or (tmp if args.quick else CACHE)
        results = measure(args)
    summaries = {s: [r["summary"] for key, r in results.items() if key.endswith(f"/{s}")] for s in SETTINGS}
    n = {s: sum(summary["n"] for summary in summaries[s]) for s in SETTINGS}
    parsed = {s: sum(summary["parsed"] for summary in summaries[s]) for s in SETTINGS}
    rate = {s: parsed[s] / n[s] for s in SETTINGS}
    result = common.row(
        "verdict_prefill_parse_rate",
        metric=f"share of SmolLM2-135M's verdicts that parse with the prefill ({len(summaries['verdict'])} checks)",
        value=round(rate["verdict"], 3),
        target="> the share without the prefill",
        met=rate["verdict"] > rate["none"],
        details={"items_per_check": args.n, "max_tokens": args.max_tokens, "threads": args.threads,
                 "parsed": parsed, "answers": n, "rate_without_prefill": round(rate["none"], 3),
                 "by_check": {k: r["summary"] for k, r in results.items()}, "quick": args.quick},
    )  # fmt: skip
    if args.answers:
        args.answers.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return common.write_rows(args.out, [result])


def measure(args: argparse.Namespace) -> dict[str, dict]:
    """Every check without and with the prefill: {"check/setting": {"summary": ..., "rows": [...]}};
    then the position probe when asked for."""
    import torch

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    instr_rows, resp_rows = filter_items(args.n, rng)
    items, references, origin = judge_items(args.n, rng)
    clear_items, clear_origin = clear_judge_items(args.n, rng)
    single = judge.load_template(OmegaConf.to_container(OmegaConf.load(args.judge_template)), args.judge_template, "single")
    pairwise = judge.load_template(OmegaConf.to_container(OmegaConf.load(args.pairwise_template)), args.pairwise_template, "pairwise")
    templates = {name: load_template(name, OmegaConf.to_container(OmegaConf.load(Path(args.filter_template_dir) / f"{name}.yaml")))
                 for name in ("filter_instructions", "filter_responses")}  # fmt: skip
    role = {"backend": "inprocess", "model": "kit:smollm2-135m", "dtype": "float32", "temperature": 0.0,
            "max_tokens": args.max_tokens, "batch_size": args.n, "max_concurrency": 4 * args.n}  # fmt: skip
    budgets = [int(b) for b in args.budgets.split(",") if b]
    tokenizer = load_tokenizer("kit:smollm2-135m")
    results = {}
    with LLMSession(roles={"expert": role}, cache_dir=args.cache, progress=False) as session:
        expert = session.role("expert")
        for check in args.checks.split(","):
            for setting in SETTINGS:
                prefill = PREFILL if setting == "verdict" else None
                expected: dict[str, str] = {}
                if check in ("filter_instructions", "filter_responses"):
                    rows = instr_rows if check == "filter_instructions" else resp_rows
                    task = VerdictTask(check, templates[check], "check", prefill=prefill)
                    requests = [r for row in rows for r in task.requests(row)]
                    expected = {row["id"]: row["expected"] for row in rows}
                    allowed = FILTER_VERDICTS
                elif check == "judge":
                    requests = list(judge.single_requests(items, single, f"judge/{single.tag}", prefill=prefill))
                    expected = {f"judge/{single.tag}/{k}": ("harmless" if v == "gpt4" else "alpaca")
                                for k, v in origin.items()}  # fmt: skip
                    allowed = judge.verdicts(single)
                elif check == "judge_clear":
                    requests = list(judge.single_requests(clear_items, single, f"clear/{single.tag}", prefill=prefill))
                    expected = {f"clear/{single.tag}/{k}": v for k, v in clear_origin.items()}
                    allowed = judge.verdicts(single)
                else:
                    requests = list(judge.pairwise_requests(items, references, pairwise, f"pw/{pairwise.tag}", 0,
                                                            prefill=prefill))  # fmt: skip
                    for request in requests:
                        item_id = request.metadata["item"]
                        gpt4_first = (origin[item_id] == "gpt4") == request.metadata["candidate_first"]
                        expected[request.id] = "A (gpt4)" if gpt4_first else "B (gpt4)"
                    allowed = judge.verdicts(pairwise)
                started = time.perf_counter()
                answers = {r.request_id: r for r in expert.generate(requests, phase=f"{check}/{setting}")}
                elapsed = time.perf_counter() - started
                rows_out = []
                for request in requests:
                    answer = answers[request.id]
                    text = answer.text if answer.ok else ""
                    verdict = parse_verdict(text, allowed)
                    rows_out.append({"id": request.id, "expected": expected.get(request.id), "verdict": verdict.verdict,
                                     "finish": getattr(answer, "finish_reason", None), "text": text[:300]})  # fmt: skip
                parsed = [row for row in rows_out if row["verdict"]]
                summary = {
                    "n": len(rows_out), "parsed": len(parsed),
                    "verdicts": dict(Counter(row["verdict"] for row in parsed)),
                    "verdict_by_expected": dict(Counter(f"{row['expected']} -> {row['verdict']}" for row in parsed)),
                    "cut_at_max_tokens": sum(row["finish"] == "length" for row in rows_out),
                    "elapsed_s": round(elapsed, 1),
                }  # fmt: skip
                full = {request.id: (answers[request.id].text if answers[request.id].ok else "") for request in requests}
                summary["parsed_at_budget"] = {b: sum(truncated_parse(tokenizer, text, prefill, b, allowed)
                                                      for text in full.values()) for b in budgets}  # fmt: skip
                results[f"{check}/{setting}"] = {"summary": summary, "rows": rows_out}
                print(f"{check:20s} {setting:8s} parsed {summary['parsed']:2d}/{summary['n']}"
                      f" at {args.max_tokens} tok; at {summary.get('parsed_at_budget')}; verdicts {summary['verdicts']};"
                      f" cut {summary['cut_at_max_tokens']}; {summary['verdict_by_expected']} ({elapsed:.0f} s)",
                      flush=True)  # fmt: skip
    if args.position_probe:
        position_probe(clear_items, clear_origin, single)
    return results


if __name__ == "__main__":
    sys.exit(main())
