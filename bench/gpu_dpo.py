"""DPO throughput on one GPU: tokens per second and model FLOPs utilisation (MFU), ~1B Llama, bf16, ZeRO-3;
then generation tokens per second of a batched `generate` with the same model.

Runs the project's own DPO stage (`run_dpo`) with the paper's recipe shape (full fine-tuning, bf16,
gradient checkpointing, DeepSpeed ZeRO-3, reference log-probs precomputed) on a ~1.1B Llama with the
TinyLlama-1.1B architecture. Without a network the weights are random (throughput does not depend on
them); `--model PATH` uses a real checkpoint instead. Skips (and says so) where CUDA is absent.

    python bench/gpu_dpo.py --out results.json           # 256 pairs of ~512 tokens
    python bench/gpu_dpo.py --quick --out results.json   # 32 pairs: a smoke check

MFU = achieved model FLOPs / peak bf16 FLOPs of the GPU, with model FLOPs per trained token
= 6 x parameters + 12 x layers x hidden x sequence (attention); the recomputation of gradient
checkpointing is not counted (as in the PaLM definition). The reference pass is reported separately.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import common

common.setup_env()

# Dense bf16 peak TFLOPS (no sparsity) by device name fragment.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5)  # fmt: skip
DRY_RUN_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024)  # fmt: skip


def build_random_llama(folder: Path, shape: dict, device: str) -> str:
    """A random Llama of the given shape in bf16 with the kit tokenizer (ids < 1024 are used)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from safer_instruct.model_kit import load_tokenizer

    tokenizer = load_tokenizer("kit:tiny")
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def measure_generation(model_path: str, device: str, batch: int, new_tokens: int) -> dict:
    """Tokens per second of one batched, greedy `generate` of exactly `new_tokens` per prompt
    (after a warm-up call), as the in-process backend generates on a GPU node without vLLM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).to(device).eval()
    prompts = [pair["prompt"][:600] for pair in make_pairs(batch)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(**inputs, **settings)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    del model  # free the GPU for the training that follows
    generated = (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
    return {"batch": batch, "new_tokens_per_prompt": new_tokens, "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "generated_tokens": int(generated), "seconds": round(seconds, 3), "tokens_per_s": round(generated / seconds, 1)}  # fmt: skip


def make_pairs(n: int) -> list[dict]:
    """Long preference pairs (~250 prompt and ~250 response tokens) from the demo instructions."""
    from safer_instruct.data.sources import load_sft_examples

    examples, _ = load_sft_examples({"source": "instructions", "path": "demo"})
    texts = [e.output for e in examples]
    pairs = []
    for i in range(n):
        prompt = " ".join(examples[(i + k) % len(examples)].instruction for k in range(12))
        chosen = " ".join(texts[(i + k) % len(texts)] for k in range(4))
        rejected = " ".join(texts[(i * 3 + k + 1) % len(texts)] for k in range(4))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, "32 pairs")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--model", default=None, help="a real ~1B checkpoint folder instead of random weights")
    parser.add_argument("--per-device", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's bf16 peak")
    parser.add_argument("--cpu-dry-run", action="store_true", help="exercise the script on CPU with a tiny Llama")
    args = parser.parse_args(argv)

    import torch

    if args.cpu_dry_run:
        name, peak, shape, device = "cpu (dry run, tiny Llama)", args.peak_tflops or 1.0, DRY_RUN_SHAPE, "cpu"
        args.per_device, args.pairs = 2, 8
    elif not torch.cuda.is_available():
        return common.write_rows(args.out, [common.skipped("gpu_dpo", "no CUDA device on this machine")])
    else:
        name, shape, device = torch.cuda.get_device_name(0), TINYLLAMA, "cuda"
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak is None:
        reason = f"unknown peak FLOPs for {name}: pass --peak-tflops"
        return common.write_rows(args.out, [common.skipped("gpu_dpo", reason)])

    from safer_instruct.config import compose
    from safer_instruct.paths import cache_root
    from safer_instruct.training.run import run_dpo
    from safer_instruct.training.trainers import read_metrics

    n_pairs = 32 if args.quick and not args.cpu_dry_run else args.pairs
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        work = Path(tmp)
        model_path = args.model or build_random_llama(work / "llama", shape, device)
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(n_pairs)))
        global_batch = 4 * args.per_device
        cfg = compose("train_dpo", [
            "model=tinyllama-1.1b", f"model.path={model_path}", "model.prompt_format=alpaca", "model.dtype=bfloat16",
            "model.max_length=512", "model.max_prompt_length=256", "data=constructed", f"data.path={data}",
            "data.dedupe=none", "train=dpo_paper", "train.deepspeed=zero3", f"train.per_device_batch_size={args.per_device}",
            f"train.global_batch_size={global_batch}", "train.logging_steps=1", "train.save_steps=0", "train.warmup_steps=0",
            f"train.ref_logps_dir={work / 'store'}", "train.dataloader_num_workers=0", f"out_dir={work / 'run'}",
            "tracking.mode=disabled",
        ])  # fmt: skip
        # Before training: once DeepSpeed ZeRO-3 has run in this process, from_pretrained would load
        # the model partitioned (transformers keeps the DeepSpeed config process-wide).
        generation = measure_generation(model_path, device, batch=4 if args.quick else 32,
                                        new_tokens=16 if args.cpu_dry_run else 128)  # fmt: skip
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        summary = run_dpo(cfg, work / "run")
        wall = time.perf_counter() - started
        metrics = read_metrics(work / "run" / "metrics.jsonl")
        final = next(row for row in reversed(metrics) if "train_runtime" in row)
        tokens = max(row.get("num_tokens", 0) for row in metrics)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
        params = summary["trainable_parameters"]
        seq = summary["data"]["max_sequence_tokens"]
        flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq
        tokens_per_s = tokens / final["train_runtime"]
        mfu = tokens_per_s * flops_per_token / (peak * 1e12)
        ref = summary["ref_logps"]["events"][0]
        ref_tokens = tokens  # one epoch: the reference pass reads the same tokens once
        details = {
            "device": name, "peak_bf16_tflops": peak, "parameters": params, "pairs": n_pairs, "steps": summary["global_step"],
            "global_batch_pairs": global_batch, "per_device_pairs": args.per_device, "max_sequence_tokens": seq,
            "trained_tokens": tokens, "train_runtime_s": final["train_runtime"], "stage_wall_s": round(wall, 1),
            "reference_pass_s": ref.get("seconds"),
            "reference_tokens_per_s": round(ref_tokens / ref["seconds"], 1) if ref.get("seconds") else None,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None, "recipe": "dpo_paper + ZeRO-3, bf16",
            "random_weights": args.model is None, "quick": args.quick,
        }  # fmt: skip
    rows = [
        common.row("gpu_dpo", metric="DPO training tokens/s (1.1B Llama, bf16, ZeRO-3, 1 GPU)",
                   value=round(tokens_per_s, 1), target="reported (no target)", met=None, details=details),
        common.row("gpu_dpo_mfu", metric="DPO model FLOPs utilisation (6N + attention per token)",
                   value=round(mfu, 4), target="reported (no target)", met=None, details=details),
        common.row("gpu_generation", metric="generation tokens/s, batched `generate` (same model, bf16, 1 GPU)",
                   value=generation["tokens_per_s"], target="reported (no target)", met=None,
                   details={"device": name, **generation}),
    ]  # fmt: skip
    return common.write_rows(args.out, rows)


if __name__ == "__main__":
    sys.exit(main())
