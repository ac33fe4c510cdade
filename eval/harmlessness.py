"""`safer-instruct eval harmlessness`: how often a judge rates a model's answers to harmful prompts harmless.

    safer-instruct eval harmlessness model=smollm2-135m                      # generate, then judge
    safer-instruct eval harmlessness 'responses.path=${release:test_set.csv}' \
        responses.column=alpaca judge=claude3                                 # judge pre-generated answers
    safer-instruct eval harmlessness model=tiny prompt_set=advbench judge@second_judge=gpt4 pairwise.enabled=true
    safer-instruct eval harmlessness model=tiny judge=gpt4 dry_run=true      # requests and cost; sends nothing

Writes into out_dir: `harmlessness.json` (rate, ci95, n, n_unjudged, by_source, judge, decoding),
`judgements.jsonl` (every verdict and rationale), `failures.jsonl`, and when generating
`responses.jsonl` + `generation.json`; with pairwise, `pairwise.json` + `pairwise_judgements.jsonl`.
A rerun with the same cache.dir sends no request whose answer is cached (resume after interruption).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safer_instruct.config import stage_main
from safer_instruct.evaluation.harmlessness import estimate_harmlessness, run_harmlessness
from safer_instruct.tracking import tracking_run


def _pct(summary: dict, key: str = "rate") -> str:
    if summary.get(key) is None:
        return "n/a"
    low, high = summary["ci95"]
    return f"{100 * summary[key]:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


@stage_main("eval_harmlessness")
def main(cfg: DictConfig, out_dir: Path) -> None:
    if cfg.get("dry_run"):
        estimate_harmlessness(cfg, out_dir)  # the table and estimate.json; nothing sent
        return
    with tracking_run(cfg, "eval_harmlessness", out_dir) as tracking:
        result = run_harmlessness(cfg, out_dir)
        # harmlessness/... for an LLM judge, refusal/... for the refusal judge (never mixed in one chart)
        prefix = "refusal" if result.get("metric") == "refusal_rate" else "harmlessness"
        metrics = {f"{prefix}/rate": result["rate"], f"{prefix}/n_unjudged": result["n_unjudged"]}
        metrics.update({f"{prefix}/{s}": v["rate"] for s, v in result["by_source"].items()})
        tracking.summary(metrics)
    metric = str(result.get("metric") or "harmless_rate").removesuffix("_rate")  # harmless | refusal
    print(f"{result['label']}: {metric} {_pct(result)} of {result['n'] - result['n_unjudged']} judged "
          f"({result['n_unjudged']} unjudged: {result['unjudged'] or 'none'}); judge {result['judge']['model']}")  # fmt: skip
    for source, summary in result["by_source"].items():
        print(f"  {source}: {_pct(summary)} (n={summary['n']}, unjudged={summary['n_unjudged']})")
    if "second_judge" in result:
        print(f"  second judge agreement: {result['second_judge']['agreement']}")
    if "pairwise" in result:
        print(f"  pairwise win rate vs {result['pairwise']['reference_column']}: {_pct(result['pairwise'], 'win_rate')}")
    print(f"results: {out_dir / 'harmlessness.json'}")


if __name__ == "__main__":
    main()
