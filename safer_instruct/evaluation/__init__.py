"""Evaluation: harmlessness through an LLM judge, downstream ability through lm-eval, the report.

* `prompts`: prompt sets (the release test set, AdvBench, HarmBench, any JSONL/CSV) and files of
  pre-generated answers, as `EvalItem`s.
* `stats`: bootstrap confidence intervals, rates with unjudged items excluded, Cohen's kappa.
* `judge`: versioned judging templates, requests to the judge role, verdicts read by
  `safer_instruct.verdict` (single-answer harmlessness and pairwise comparison).
* `generation`: answers of the model under test through the `policy` LLM role, in the project's one
  prompt format, with the decoding settings recorded.
* `harmlessness`: the stage: items -> answers -> judgements -> `harmlessness.json`.
* `downstream`: lm-evaluation-harness on harness or local tasks, results with versions and settings.
* `report`: the comparison table (Markdown + CSV), bar charts and DPO training curves.
"""
