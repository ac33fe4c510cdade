"""What a construction run leaves in `out_dir` besides the preference rows.

* `stats.json` - the funnel: corpus rows read / quarantined, then for each phase the count in and out,
  per category, with the reason for every drop (in == out + sum(dropped), and each phase's `in` is the
  previous phase's `out`; an answer cut off at max_tokens is dropped as `truncated`, or counted in
  `truncated_kept` where `on_truncated.<phase>=flag`; `inputs_cut`: corpus texts cut to the reversed
  model's prompt budget), the held-out split, the leakage guard, and LLM usage per phase;
* `datasets/` - a `DatasetDict` (train, test) loadable with `datasets.load_from_disk`;
* `README.md` - the dataset card: purpose, content warning, funnel table, models and prompt versions,
  examples;
* `funnel.png` - the funnel as a bar chart;
* optionally the dataset and card pushed to the Hugging Face Hub (`push.repo_id`; off by default).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safer_instruct.construct.phases import PHASE_ORDER
from safer_instruct.errors import SaferInstructError

TEMPLATE_NAMES = ("reverse", "filter_instructions", "respond", "filter_responses")


def build_stats(done: Mapping[str, Mapping[str, Any]], run_info: Mapping[str, Any]) -> dict[str, Any]:
    """stats.json from the finished phases' records (`done.json` of each phase)."""
    phases = {}
    llm = {}
    for name in PHASE_ORDER:
        if name not in done:
            continue
        info = done[name]
        entry = dict(info["funnel"])
        extras = ("texts", "samples_per_text", "inputs_cut", "expert_check", "on_truncated", "truncated_kept", "splits",
                  "leakage")  # fmt: skip
        entry.update({key: info[key] for key in extras if key in info})
        phases[name] = entry
        if info.get("llm"):
            llm[name] = info["llm"]
    stats: dict[str, Any] = {
        "corpus": done.get("induce", {}).get("corpus"),
        "phases": phases,
        "splits": done.get("assemble", {}).get("splits"),
        "llm": llm,
        **dict(run_info),
    }
    stats["problems"] = funnel_problems(stats)
    return stats


def funnel_problems(stats: Mapping[str, Any]) -> list[str]:
    """Everything that does not add up in a funnel (empty when consistent)."""
    problems = []
    phases = stats.get("phases") or {}
    previous_out = None
    for name in PHASE_ORDER:
        entry = phases.get(name)
        if entry is None:
            previous_out = None
            continue
        dropped = sum(entry["dropped"].values())
        if entry["in"] != entry["out"] + dropped:
            problems.append(f"{name}: in {entry['in']} != out {entry['out']} + dropped {dropped}")
        for category, block in entry.get("by_category", {}).items():
            if block["in"] != block["out"] + sum(block["dropped"].values()):
                problems.append(f"{name}/{category}: counts do not add up")
        if name == "induce":
            texts = entry.get("texts")
            if texts is not None and entry["in"] != texts * entry.get("samples_per_text", 1):
                problems.append(f"induce: in {entry['in']} != texts {texts} x samples")
            corpus = stats.get("corpus") or {}
            if corpus and corpus["rows"] != corpus["kept"] + corpus["quarantined"] + corpus.get("over_category_limit", 0):
                problems.append("corpus: rows != kept + quarantined + over_category_limit")
        elif previous_out is not None and entry["in"] != previous_out:
            problems.append(f"{name}: in {entry['in']} != previous phase's out {previous_out}")
        splits = entry.get("splits") if name == "assemble" else None
        if splits is not None and sum(splits.values()) != entry["out"]:
            problems.append("assemble: train + test != out")
        previous_out = entry["out"]
    return problems


# ---------------------------------------------------------------- datasets folder


def preference_features():
    from datasets import Features, Value

    text = Value("string")
    return Features({
        "prompt": text, "chosen": text, "rejected": text, "category": text, "source": text, "source_id": text,
        "provenance": {
            "id": text, "sample_index": Value("int32"), "corpus": text, "inducer": text, "expert": text,
            "templates": {name: text for name in TEMPLATE_NAMES}, "verdict_prefill": text,
            "truncated": [text],  # phases whose answer was cut off at max_tokens and kept (on_truncated=flag)
        },
    })  # fmt: skip


def write_datasets(out_dir: Path, splits: Mapping[str, Path]) -> Path:
    """Save the splits as a DatasetDict under out_dir/datasets (streamed through Arrow, not held in memory)."""
    from datasets import Dataset, DatasetDict

    features = preference_features()
    scratch = out_dir / ".datasets-build"
    shutil.rmtree(scratch, ignore_errors=True)
    parts = {}
    for split, path in splits.items():
        if path.is_file() and path.stat().st_size > 0:
            parts[split] = Dataset.from_json(str(path), features=features, cache_dir=str(scratch),
                                             keep_in_memory=False)  # fmt: skip
        else:
            parts[split] = Dataset.from_dict({name: [] for name in features}, features=features)
    target = out_dir / "datasets"
    tmp = out_dir / ".datasets.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    DatasetDict(parts).save_to_disk(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    shutil.rmtree(scratch, ignore_errors=True)
    return target


# ---------------------------------------------------------------- funnel plot


def funnel_rows(stats: Mapping[str, Any]) -> list[tuple[str, int, int, dict[str, int]]]:
    rows = []
    corpus = stats.get("corpus")
    if corpus:
        set_aside = dict(corpus.get("quarantined_by_reason", {}))
        if corpus.get("over_category_limit"):
            set_aside["over_category_limit"] = corpus["over_category_limit"]
        rows.append(("corpus", corpus["rows"], corpus["kept"], set_aside))
    for name in PHASE_ORDER:
        entry = (stats.get("phases") or {}).get(name)
        if entry:
            rows.append((name, entry["in"], entry["out"], dict(entry["dropped"])))
    return rows


def write_funnel_plot(path: Path, stats: Mapping[str, Any]) -> Path | None:
    rows = funnel_rows(stats)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, ins, outs, _ = (list(column)[::-1] for column in zip(*rows, strict=True))  # first row at the top
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    ax.barh(labels, ins, color="#d9d9d9", label="in")
    ax.barh(labels, outs, color="#3b75af", label="kept")
    for y, (n_in, n_out) in enumerate(zip(ins, outs, strict=True)):
        ax.text(max(n_in, 1) * 1.01, y, f"{n_out} / {n_in}", va="center", fontsize=9)
    ax.set_xlabel("items (corpus: rows; induce: texts x samples; later phases: candidates)")
    ax.set_title("Safer-Instruct construction funnel")
    ax.set_xlim(0, max(ins + [1]) * 1.25)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- dataset card


def _md_cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def dataset_card(stats: Mapping[str, Any], *, title: str, tags: Sequence[str], content_warning: str, purpose: str,
                 templates: Mapping[str, Mapping[str, Any]], models: Mapping[str, str],
                 examples: Sequence[Mapping[str, Any]], corpus: str, verdict_prefill: str | None = None,
                 ) -> str:  # fmt: skip
    lines = [
        "---",
        f"tags: [{', '.join(tags)}]",
        "task_categories: [text-generation]",
        "configs:",
        "- config_name: default",
        "  data_files: [{split: train, path: preference.jsonl}, {split: test, path: preference_test.jsonl}]",
        "---",
        "",
        f"# {title}",
        "",
        f"**Content warning.** {' '.join(content_warning.split())}",
        "",
        "## Purpose",
        "",
        purpose.strip(),
        "",
        "Built with the Safer-Instruct method (arXiv 2311.08685): a reversed instruction-tuned model induces the "
        "instruction that each undesired text answers; an expert model filters the instructions, writes the "
        "preferred response, and checks it; the undesired text is the rejected response.",
        "",
        f"Corpus: `{corpus}`.",
        "",
        "## Funnel",
        "",
        "| phase | in | kept | dropped (reason: count) |",
        "|---|---|---|---|",
    ]
    for name, n_in, n_out, dropped in funnel_rows(stats):
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()) if v) or "-"
        lines.append(f"| {name} | {n_in} | {n_out} | {reasons} |")
    for name, entry in (stats.get("phases") or {}).items():
        if entry.get("expert_check") is False:
            lines += ["", f"{name}: the expert check was off (`{name}.expert_check=false`); only heuristics filtered."]
    splits = stats.get("splits")
    if splits:
        lines += ["", f"Splits: train {splits['train']}, test {splits['test']} (held out by source text)."]
    leakage = ((stats.get("phases") or {}).get("assemble") or {}).get("leakage")
    if leakage:
        sets = ", ".join(f"{k} ({v} prompts)" for k, v in leakage.get("sets", {}).items()) or "none"
        lines += ["", f"Leakage guard: prompts matching (exactly or nearly) these evaluation sets were removed: {sets}."]
        for name, why in (leakage.get("skipped") or {}).items():
            lines.append(f"Not checked: {name} ({why}).")
    per_category = ((stats.get("phases") or {}).get("assemble") or {}).get("by_category")
    if per_category:
        lines += ["", "| category | final rows |", "|---|---|"]
        lines += [f"| {cat} | {block['out']} |" for cat, block in sorted(per_category.items())]
    lines += ["", "## Models and prompts", "", "| role | model |", "|---|---|"]
    lines += [f"| {role} | `{model}` |" for role, model in models.items()]
    lines += ["", "| prompt | version |", "|---|---|"]
    lines += [f"| {name} | `{tpl.get('version')}` |" for name, tpl in templates.items()]
    if verdict_prefill is not None:
        lines += ["", f"The expert's pass/fail answers were prefilled: each began with `{verdict_prefill}` "
                  "(written for the model, which continued it), to keep a small model in the verdict format."]
    for name, tpl in templates.items():
        lines += ["", f"<details><summary>{name} template ({tpl.get('version')})</summary>", "", "```text"]
        if tpl.get("system"):
            lines += ["[system]", str(tpl["system"]).strip(), "[user]"]
        lines += [str(tpl.get("template", "")).strip(), "```", "", "</details>"]
    lines += ["", "## Examples", ""]
    if not examples:
        lines.append("No rows survived the filters.")
    for example in examples:
        lines += [
            f"- **category** {example.get('category')} · **prompt**: {_md_cell(example['prompt'])}",
            f"  - chosen: {_md_cell(example['chosen'])}",
            f"  - rejected: {_md_cell(example['rejected'])}",
        ]
    lines += [
        "",
        "## Files",
        "",
        "- `preference.jsonl` (train) and `preference_test.jsonl` (held out): TRL preference fields `prompt`, "
        "`chosen`, `rejected`, plus `category`, `source`, `source_id` and `provenance` (models, template versions).",
        "- `datasets/`: the same as a `DatasetDict` (`datasets.load_from_disk`).",
        "- `stats.json`: the funnel with drop reasons per phase and category; `failures.jsonl`: requests that got no answer.",
        "",
    ]
    return "\n".join(lines)


def first_rows(path: Path, n: int = 3) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in itertools.islice(handle, n)]


def push_to_hub(out_dir: Path, repo_id: str, private: bool = True) -> None:
    """Upload the dataset and its card (never called unless `push.repo_id` is set)."""
    from datasets import load_from_disk

    try:
        load_from_disk(str(out_dir / "datasets")).push_to_hub(repo_id, private=private)
        from huggingface_hub import HfApi

        HfApi().upload_file(path_or_fileobj=str(out_dir / "README.md"), path_in_repo="README.md",
                            repo_id=repo_id, repo_type="dataset")  # fmt: skip
    except Exception as err:  # noqa: BLE001 - network/auth problems become one readable line
        raise SaferInstructError(f"push to the Hub ({repo_id}) failed: {str(err).splitlines()[0]}") from None
