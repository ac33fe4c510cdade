"""The GPU check: one command on a GPU machine (`make gpu-check`), sized for 8 minutes on one H200
(about 5 expected; not yet run on one). No part runs on past `--time-limit-s` (450 s) after the install.

Installs the wheels the machine lacks from the bundle `make gpu-bundle` made (`--bundle DIR`, no
registry needed), then runs each part in its own process (DeepSpeed's ZeRO-3 settings stay with a
process, and every part starts with an empty GPU) and writes one row per result:

* `gpu_matmul_peak`: the GPU's bf16 peak as measured here, one 8192^3 matrix product (mean of 10
  after 3 warm-ups), beside the datasheet's dense figure;
* `gpu_generation`: tokens/s of one batched greedy `generate` (32 prompts x 128 new tokens) of a
  ~1.1B Llama (TinyLlama-1.1B's shape, random weights, bf16);
* `gpu_dpo`, `gpu_dpo_mfu`: DPO training tokens/s of that model with the paper's DPO recipe (full
  fine-tuning, bf16, ZeRO-3, one GPU, sequences of 512 tokens) through the project's `run_dpo`, and
  its model FLOPs utilisation against the measured peak (against the datasheet's in the details);
* `gpu_chain`: the paper's chain in miniature, through the entry scripts: `train/sft.py` with
  train=sft_paper, `train/dpo.py` with train=dpo_paper (both ZeRO-3, bf16), then `eval/harmlessness.py`
  generating the DPO policy's answers to the first 64 prompts of the release's test set, batched on
  the GPU. Same configs as the paper presets except: the model (the random ~1.1B Llama in
  alpaca-7b's prompt format), the step counts (4 SFT and 2 DPO steps), the data (the bundled demo
  instructions for SFT, the benchmark's own long pairs for DPO: ours), in-process generation instead
  of vLLM (not installed there) and the judge (a local stand-in: the policy itself, in process; its
  verdicts mean nothing);
* `gpu_qlora_dpo`: QLoRA DPO (bitsandbytes 4-bit nf4 base + LoRA) of the same model on CUDA, when
  bitsandbytes imports (skipped, with the reason, when it does not).

    python bench/gpu_check.py --bundle .gpu-bundle --out bench/results/gpu_check.json
    python bench/gpu_check.py --cpu-dry-run --out rows.json     # every part on CPU with a tiny Llama (CI)
    python bench/gpu_check.py --pack-bundle .gpu-bundle         # (make gpu-bundle) add the test set, check the size

MFU = achieved model FLOPs / peak bf16 FLOPs, with model FLOPs per trained token = 6 x parameters
+ 12 x layers x hidden x sequence (attention); the recomputation of gradient checkpointing is not
counted (the PaLM definition) and the reference pass is reported separately.

It prints one table last and exits non-zero when any part failed. Without CUDA (and without
`--cpu-dry-run`) every row is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

common.setup_env()

from run_all import markdown_table  # noqa: E402

ROOT = common.ROOT
PARTS = ("matmul_peak", "generation", "dpo", "chain", "qlora_dpo")
ROWS_OF = {"matmul_peak": ["gpu_matmul_peak"], "generation": ["gpu_generation"], "dpo": ["gpu_dpo", "gpu_dpo_mfu"],
           "chain": ["gpu_chain"], "qlora_dpo": ["gpu_qlora_dpo"]}  # fmt: skip
PART_TIMEOUT_S = {"matmul_peak": 120, "generation": 240, "dpo": 420, "chain": 600, "qlora_dpo": 300}
SITE = Path(tempfile.gettempdir()) / "safer-instruct-gpu-site"  # where the bundle is installed
RELEASE_TEST_SET = "test_set.csv"
CHAIN_PROMPTS = 64
REPORTED = "reported (no target)"


# --- the model and the data the parts share ----------------------------------------------------------

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


def dpo_throughput(model_path: str, work: Path, device: str, name: str, peak: float, per_device: int, n_pairs: int,
                   random_weights: bool, quick: bool) -> list[dict]:  # fmt: skip
    """The rows gpu_dpo and gpu_dpo_mfu: `run_dpo` with the dpo_paper recipe under ZeRO-3 on one device,
    `n_pairs` pairs of ~512 tokens, 4 x `per_device` pairs per step; MFU against `peak` TFLOP/s."""
    import torch
    from transformers import AutoConfig

    from safer_instruct.config import compose
    from safer_instruct.training.run import run_dpo
    from safer_instruct.training.trainers import read_metrics

    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(n_pairs)))
    global_batch = 4 * per_device
    cfg = compose("train_dpo", [
        "model=tinyllama-1.1b", f"model.path={model_path}", "model.prompt_format=alpaca", "model.dtype=bfloat16",
        "model.max_length=512", "model.max_prompt_length=256", "data=constructed", f"data.path={data}",
        "data.dedupe=none", "train=dpo_paper", "train.deepspeed=zero3", f"train.per_device_train_batch_size={per_device}",
        f"train.global_batch_size={global_batch}", "train.logging_steps=1", "train.save_strategy=no", "train.warmup_steps=0",
        f"train.ref_logps_dir={work / 'store'}", "train.dataloader_num_workers=0", f"out_dir={work / 'run'}",
        "tracking.mode=disabled",
    ])  # fmt: skip
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = run_dpo(cfg, work / "run")
    wall = time.perf_counter() - started
    metrics = read_metrics(work / "run" / "metrics.jsonl")
    final = next(row for row in reversed(metrics) if "train_runtime" in row)
    tokens = max(row.get("num_tokens", 0) for row in metrics)
    config = AutoConfig.from_pretrained(model_path)
    params = summary["trainable_parameters"]
    seq = summary["data"]["max_sequence_tokens"]
    flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq
    tokens_per_s = tokens / final["train_runtime"]
    mfu = tokens_per_s * flops_per_token / (peak * 1e12)
    ref_seconds = summary["ref_logps"]["pass_seconds"] or None  # the precompute pass, before training
    ref_tokens = tokens  # one epoch: the reference pass reads the same tokens once
    details = {
        "device": name, "peak_bf16_tflops": peak, "parameters": params, "pairs": n_pairs, "steps": summary["global_step"],
        "global_batch_pairs": global_batch, "per_device_pairs": per_device, "max_sequence_tokens": seq,
        "trained_tokens": tokens, "train_runtime_s": final["train_runtime"], "stage_wall_s": round(wall, 1),
        "model_flops_per_token": flops_per_token, "reference_pass_s": ref_seconds,
        "reference_tokens_per_s": round(ref_tokens / ref_seconds, 1) if ref_seconds else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "recipe": "dpo_paper + ZeRO-3, bf16", "random_weights": random_weights, "quick": quick,
    }  # fmt: skip
    return [
        common.row("gpu_dpo", metric="DPO training tokens/s (1.1B Llama, bf16, ZeRO-3, 1 GPU)",
                   value=round(tokens_per_s, 1), target="reported (no target)", met=None, details=details),
        common.row("gpu_dpo_mfu", metric="DPO model FLOPs utilisation (6N + attention per token)",
                   value=round(mfu, 4), target="reported (no target)", met=None, details=details),
    ]  # fmt: skip


# --- the bundle ---------------------------------------------------------------------------------


def pack_bundle(folder: Path, limit_mib: float) -> int:
    """After the wheels are in `folder`: add the release's test set (for the chain's 64 prompts; the GPU
    machine gets the checkout without ../shared), list every file with its size, fail over the limit."""
    from safer_instruct.paths import release_location

    test_set = Path(release_location()) / RELEASE_TEST_SET
    if test_set.is_file():
        (folder / "release").mkdir(parents=True, exist_ok=True)
        shutil.copy2(test_set, folder / "release" / RELEASE_TEST_SET)
    else:
        print(f"[gpu-bundle] {test_set} not found: the chain's generation will be skipped there", flush=True)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "MANIFEST.md")
    total = sum(p.stat().st_size for p in files)
    lines = ["| file | MiB |", "|---|---|"]
    lines += [f"| `{p.relative_to(folder)}` | {p.stat().st_size / 2**20:.2f} |" for p in files]
    lines.append(f"| total ({len(files)} files) | {total / 2**20:.2f} |")
    (folder / "MANIFEST.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    if total > limit_mib * 2**20:
        print(f"[gpu-bundle] {total / 2**20:.1f} MiB is over the {limit_mib} MiB limit: leave a package out", flush=True)
        return 1
    return 0


class BundleError(RuntimeError):
    """The bundle does not install on this machine (another Python, a missing wheel)."""


def install_bundle(folder: Path) -> dict:
    """pip-install the bundle's wheels (no index, no dependency resolution) into SITE; put it on the path."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return {"bundle": str(folder), "wheels": 0, "note": "no wheels there: using what is installed"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                           "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(SITE),
                           *map(str, wheels)], capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise BundleError(f"pip install of the {len(wheels)} wheels in {folder} for {sys.executable} failed: {tail}")
    return {"bundle": str(folder), "wheels": len(wheels), "site": str(SITE),
            "install_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def child_env(bundle: Path | None) -> dict[str, str]:
    """The parts' environment: the bundle's site and the checkout importable; the release's test set
    from the bundle when the checkout has no release beside it."""
    env = dict(os.environ)
    paths = [str(SITE)] if SITE.is_dir() else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if bundle is not None and "SAFER_INSTRUCT_RELEASE" not in env:
        from safer_instruct.paths import release_location

        carried = bundle / "release"
        if not (Path(release_location()) / RELEASE_TEST_SET).is_file() and (carried / RELEASE_TEST_SET).is_file():
            env["SAFER_INSTRUCT_RELEASE"] = str(carried.resolve())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --- the parts (each runs in its own process: `--part NAME`) ------------------------------------------


class Setup:
    """What every part knows: device, its name, the model shape, and the sizes of the run."""

    def __init__(self, dry_run: bool, work: Path):
        import torch

        self.dry_run, self.work = dry_run, work
        self.device = "cpu" if dry_run else "cuda"
        self.name = "cpu (dry run, tiny Llama)" if dry_run else torch.cuda.get_device_name(0)
        self.shape = DRY_RUN_SHAPE if dry_run else TINYLLAMA
        self.datasheet_tflops = None if dry_run else next((v for k, v in PEAK_TFLOPS.items() if k in self.name), None)

    @property
    def model_path(self) -> str:
        """The random Llama, built once per run (the first part to need it builds it)."""
        folder = self.work / "llama"
        if not (folder / "config.json").is_file():
            build_random_llama(folder, self.shape, self.device)
        return str(folder)


def part_matmul_peak(setup: Setup) -> list[dict]:
    import torch

    size, dtype = (512, torch.float32) if setup.dry_run else (8192, torch.bfloat16)
    a = torch.randn(size, size, device=setup.device, dtype=dtype)
    b = torch.randn(size, size, device=setup.device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if setup.device == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    seconds = (time.perf_counter() - started) / 10
    tflops = 2 * size**3 / seconds / 1e12
    details = {"device": setup.name, "size": size, "dtype": str(dtype).removeprefix("torch."), "seconds_per_product": seconds,
               "datasheet_dense_bf16_tflops": setup.datasheet_tflops, "method": "mean of 10 products after 3 warm-ups"}  # fmt: skip
    (setup.work / "peak.json").write_text(json.dumps({"tflops": tflops}))
    return [common.row("gpu_matmul_peak", metric=f"measured {details['dtype']} peak, one {size}^3 matrix product (TFLOP/s)",
                       value=round(tflops, 3), target=REPORTED, met=None, details=details)]  # fmt: skip


def part_generation(setup: Setup) -> list[dict]:
    batch, new_tokens = (8, 16) if setup.dry_run else (32, 128)
    generation = measure_generation(setup.model_path, setup.device, batch=batch, new_tokens=new_tokens)
    return [common.row("gpu_generation", metric="generation tokens/s, batched greedy `generate` (~1.1B Llama, bf16, 1 GPU)",
                       value=generation["tokens_per_s"], target=REPORTED, met=None,
                       details={"device": setup.name, **generation})]  # fmt: skip


def part_dpo(setup: Setup) -> list[dict]:
    peak_file = setup.work / "peak.json"
    measured = json.loads(peak_file.read_text())["tflops"] if peak_file.is_file() else None
    peak = measured or setup.datasheet_tflops
    if peak is None:
        raise RuntimeError(f"no bf16 peak for {setup.name}: the matmul part did not run and no datasheet figure is known")
    per_device, pairs = (2, 8) if setup.dry_run else (8, 256)
    (setup.work / "dpo").mkdir(parents=True, exist_ok=True)
    rows = dpo_throughput(setup.model_path, setup.work / "dpo", setup.device, setup.name, peak, per_device, pairs,
                          random_weights=True, quick=False)  # fmt: skip
    for row in rows:
        row["details"]["peak_source"] = "measured (gpu_matmul_peak)" if measured else "datasheet"
        if setup.datasheet_tflops and row["benchmark"] == "gpu_dpo_mfu":
            row["details"]["mfu_vs_datasheet_peak"] = round(row["value"] * peak / setup.datasheet_tflops, 4)
    return rows


def run_entry(args: list[str], log: Path) -> None:
    """One entry script of the framework (train/*.py, eval/*.py) from the checkout, its output logged."""
    with log.open("w") as handle:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{args[0]} exited {proc.returncode}:\n" + "\n".join(tail))


def paper_model(setup: Setup, path: str) -> list[str]:
    """The paper presets' model settings (alpaca-7b: Alpaca prompt, 512/256 tokens) with another model."""
    dtype = "float32" if setup.dry_run else "bfloat16"
    return ["model=alpaca-7b", f"model.path={path}", f"model.dtype={dtype}"]


def on_device(setup: Setup) -> list[str]:
    """Training settings that differ on CPU: fp32 instead of bf16 (the GPU run keeps the recipe's)."""
    return ["train.bf16=false"] if setup.dry_run else []


def part_chain(setup: Setup) -> list[dict]:
    from safer_instruct.paths import release_location
    from safer_instruct.training.trainers import read_metrics

    work = setup.work / "chain"
    work.mkdir(parents=True, exist_ok=True)
    batch = ["train.per_device_train_batch_size=2", "train.global_batch_size=4"] if setup.dry_run else []
    common_train = ["train.save_strategy=no", "train.logging_steps=1", "tracking.mode=disabled", *on_device(setup), *batch]
    seconds = {}
    started = time.perf_counter()
    run_entry(["train/sft.py", *paper_model(setup, setup.model_path), "train=sft_paper", "data=demo_instructions",
               "train.max_steps=4", f"out_dir={work / 'sft'}", *common_train], work / "sft.log")  # fmt: skip
    seconds["sft"] = round(time.perf_counter() - started, 1)
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(16 if setup.dry_run else 128)))
    started = time.perf_counter()
    run_entry(["train/dpo.py", *paper_model(setup, str(work / "sft" / "model")), "train=dpo_paper", "data=constructed",
               f"data.path={pairs}", "data.dedupe=none", "train.max_steps=2", f"train.ref_logps_dir={work / 'store'}",
               f"out_dir={work / 'dpo'}", *common_train], work / "dpo.log")  # fmt: skip
    seconds["dpo"] = round(time.perf_counter() - started, 1)
    details = {"device": setup.name, "stage_seconds": seconds,
               "sft_losses": [r["loss"] for r in read_metrics(work / "sft" / "metrics.jsonl") if "loss" in r],
               "dpo_losses": [r["loss"] for r in read_metrics(work / "dpo" / "metrics.jsonl") if "loss" in r],
               "model": "random ~1.1B Llama" if not setup.dry_run else "tiny Llama", "recipes": "sft_paper, dpo_paper"}  # fmt: skip
    test_set = Path(release_location()) / RELEASE_TEST_SET
    if not test_set.is_file():
        details["generation"] = f"skipped: the release's test set is not here ({test_set}); make gpu-bundle carries it"
        metric = "paper chain in miniature: SFT, DPO (wall s; generation skipped)"
        return [common.row("gpu_chain", metric=metric, value=round(sum(seconds.values()), 1), target=REPORTED,
                           met=None, details=details)]  # fmt: skip
    policy = str(work / "dpo" / "model")
    device, dtype = ("cpu", "float32") if setup.dry_run else ("cuda", "bfloat16")
    stand_in = [f"judge.model={policy}", "judge.backend=inprocess", f"++judge.device={device}", f"++judge.dtype={dtype}",
                f"++judge.batch_size={CHAIN_PROMPTS}", "judge.max_tokens=16"]  # fmt: skip
    max_tokens = 32 if setup.dry_run else 256
    started = time.perf_counter()
    run_entry(["eval/harmlessness.py", *paper_model(setup, policy), "prompt_set=release_test_set",
               f"prompts.limit={CHAIN_PROMPTS}", "llm@policy=inprocess", f"policy.device={device}", f"policy.dtype={dtype}",
               f"policy.batch_size={CHAIN_PROMPTS}", f"policy.max_concurrency={CHAIN_PROMPTS}", f"policy.max_tokens={max_tokens}",
               "judge=local", *stand_in, f"cache.dir={work / 'llm-cache'}", "tracking.mode=disabled",
               f"out_dir={work / 'eval'}"], work / "eval.log")  # fmt: skip
    seconds["generate_and_judge"] = round(time.perf_counter() - started, 1)
    answers = [json.loads(line) for line in (work / "eval" / "responses.jsonl").read_text().splitlines() if line.strip()]
    answered = [a for a in answers if a.get("response")]
    if len(answers) != CHAIN_PROMPTS or not answered:
        raise RuntimeError(f"expected {CHAIN_PROMPTS} answers, got {len(answers)} ({len(answered)} non-empty)")
    generation = json.loads((work / "eval" / "generation.json").read_text())
    details.update({"answers": len(answers), "non_empty_answers": len(answered), "policy_max_tokens": max_tokens,
                    "generation": generation, "judge": "stand-in: the policy in process (its verdicts mean nothing)"})  # fmt: skip
    return [common.row("gpu_chain", metric=f"paper chain in miniature: SFT, DPO, {CHAIN_PROMPTS} answers generated (wall s)",
                       value=round(sum(seconds.values()), 1), target=REPORTED, met=None, details=details)]  # fmt: skip


def part_qlora_dpo(setup: Setup) -> list[dict]:
    from safer_instruct.training.trainers import read_metrics

    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means QLoRA cannot run here
        return [common.skipped("gpu_qlora_dpo", f"bitsandbytes does not import here ({err}): not in the bundle?")]
    work = setup.work / "qlora"
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "pairs.jsonl"
    n_pairs = 8 if setup.dry_run else 64
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(n_pairs)))
    batch = ["train.per_device_train_batch_size=2", "train.global_batch_size=4"] if setup.dry_run else \
        ["train.per_device_train_batch_size=8", "train.global_batch_size=32"]  # fmt: skip
    started = time.perf_counter()
    run_entry(["train/dpo.py", *paper_model(setup, setup.model_path), "train=dpo_paper", "train.deepspeed=null",
               "peft=qlora", "data=constructed", f"data.path={pairs}", "data.dedupe=none", "train.max_steps=2",
               "train.save_strategy=no", "train.logging_steps=1", "train.warmup_steps=0", "train.learning_rate=1e-4",
               f"train.ref_logps_dir={work / 'store'}", f"out_dir={work / 'run'}", "tracking.mode=disabled",
               *on_device(setup), *batch], work / "dpo.log")  # fmt: skip
    wall = time.perf_counter() - started
    metrics = read_metrics(work / "run" / "metrics.jsonl")
    final = next(row for row in reversed(metrics) if "train_runtime" in row)
    tokens = max(row.get("num_tokens", 0) for row in metrics)
    summary = json.loads((work / "run" / "train_summary.json").read_text())
    details = {"device": setup.name, "steps": summary["global_step"], "trained_tokens": tokens,
               "train_runtime_s": final["train_runtime"], "stage_wall_s": round(wall, 1),
               "trainable_parameters": summary["trainable_parameters"],
               "losses": [r["loss"] for r in metrics if "loss" in r], "peft": "qlora (nf4, double quant, LoRA r16 all-linear)"}  # fmt: skip
    return [common.row("gpu_qlora_dpo", metric="QLoRA DPO training tokens/s (bitsandbytes 4-bit + LoRA, 1 GPU)",
                       value=round(tokens / final["train_runtime"], 1), target=REPORTED, met=None, details=details)]  # fmt: skip


def run_part(name: str, dry_run: bool, work: Path, out: Path) -> int:
    setup = Setup(dry_run, work)
    rows = globals()[f"part_{name}"](setup)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


# --- the whole check ---------------------------------------------------------------------------------


def check(args, bundle_info: dict | None) -> list[dict]:
    """Every part in its own process, within the check's time limit; a part that fails or runs out of
    time gives error rows and the others still run. The rows so far are saved after each part, so a
    check stopped from outside still leaves them."""
    env = child_env(args.bundle)
    deadline = time.monotonic() + args.time_limit_s
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for name in args.parts:
            out = work / f"{name}.json"
            cmd = [sys.executable, __file__, "--part", name, "--work", str(work), "--out", str(out),
                   *(["--cpu-dry-run"] if args.cpu_dry_run else [])]  # fmt: skip
            timeout = min(PART_TIMEOUT_S[name], deadline - time.monotonic())
            print(f"[gpu-check] {name} ...", flush=True)
            started = time.perf_counter()
            failure = None
            if timeout < 10:
                failure = f"not run: the check's time limit ({args.time_limit_s} s) was used up"
            else:
                try:
                    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
                    if proc.returncode != 0 or not out.is_file():
                        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
                        failure = f"exit {proc.returncode}: " + " / ".join(tail)
                except subprocess.TimeoutExpired:
                    failure = f"timed out after {timeout:.0f} s"
            if failure:
                print(f"[gpu-check] {name} failed: {failure}", flush=True)
                part_rows = [{"benchmark": row, "error": failure} for row in ROWS_OF[name]]
            else:
                part_rows = json.loads(out.read_text())
                print(markdown_table(part_rows), flush=True)
            for row in part_rows:
                row["wall_s"] = round(time.perf_counter() - started, 1)
                if bundle_info is not None and "details" in row:
                    row["details"]["bundle"] = bundle_info
            rows += part_rows
            save(args, rows)
    return rows


def save(args, rows: list[dict]) -> None:
    """The rows as JSON and as a table beside it (`--out`), copied into `--copy-to` too."""
    if not args.out:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown_table(rows))
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for path in (args.out, args.out.with_suffix(".md")):
            shutil.copy2(path, args.copy_to / path.name)


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__, "the same as a full run (the check is already small)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every part on CPU with a tiny Llama (tests)")
    parser.add_argument("--bundle", type=Path, default=None, help="install the wheels of this folder first (no index)")
    parser.add_argument("--pack-bundle", type=Path, default=None, help="finish a bundle folder: test set, listing, size")
    parser.add_argument("--bundle-limit-mib", type=float, default=60.0, help="the bundle's size limit (--pack-bundle)")
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS, help="run only these parts")
    parser.add_argument("--copy-to", type=Path, default=None, help="also copy the rows (json, md) into this folder")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="stop starting parts after this long (default 450 s on a GPU, where the device call's "
                             "limit is 10 minutes; none in a CPU dry run)")
    parser.add_argument("--part", choices=PARTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.pack_bundle:
        return pack_bundle(args.pack_bundle, args.bundle_limit_mib)
    if args.part:
        return run_part(args.part, args.cpu_dry_run, args.work, args.out)

    if args.time_limit_s is None:
        args.time_limit_s = 3600.0 if args.cpu_dry_run else 450.0
    import torch

    bundle_info = None
    if args.bundle and args.bundle.is_dir() and not args.cpu_dry_run and torch.cuda.is_available():
        try:
            bundle_info = install_bundle(args.bundle)
        except BundleError as err:
            rows = [{"benchmark": "gpu_bundle", "error": str(err)}]
            save(args, rows)
            print(markdown_table(rows), flush=True)
            return 1
    if not args.cpu_dry_run and not torch.cuda.is_available():
        rows = [common.skipped(row, "no CUDA device on this machine (the check needs a GPU; --cpu-dry-run runs it on CPU)")
                for part in args.parts for row in ROWS_OF[part]]  # fmt: skip
    else:
        rows = check(args, bundle_info)
    print(json.dumps(rows, indent=2), flush=True)
    save(args, rows)
    print(markdown_table(rows), flush=True)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
