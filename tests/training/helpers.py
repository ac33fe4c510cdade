"""Shared pieces of the training tests: composing stage configs, watching parameters, small datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict
from transformers import TrainerCallback

from safer_instruct.config import compose
from safer_instruct.paths import PROJECT_ROOT


def stage_config(config_name: str, out_dir: Path, *overrides: str):
    """A resolved stage config as its entry script would see it (tracking off, fast CPU settings)."""
    cfg = compose(config_name, [f"out_dir={out_dir}", "tracking.mode=disabled", *overrides])
    with open_dict(cfg):
        cfg.out_dir = str(out_dir)
    OmegaConf.resolve(cfg)
    return cfg


class ParamWatcher(TrainerCallback):
    """Snapshots every trainable parameter when training starts and compares them when it ends."""

    def __init__(self):
        self.before: dict[str, torch.Tensor] = {}
        self.unchanged: list[str] = []
        self.checked = 0
        self.quantized = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.quantized = any(type(m).__name__ == "Linear4bit" for m in model.modules())

    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        self.checked = len(self.before)
        self.unchanged = [n for n, old in self.before.items() if torch.equal(old, params[n].detach().float())]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


SAFE = "I cannot help with that, but here is a safer alternative: talk to someone you trust."
UNSAFE = "def attack(): import os; os.system('rm -rf /'); return secrets.token_hex(99)"


def separable_pairs(n: int) -> list[dict]:
    """Preference pairs a tiny model can separate: one calm refusal style vs one code-like style."""
    topics = ["the bank", "my neighbour", "a school", "the police", "a website", "my boss", "the city", "a shop"]
    return [
        {"prompt": f"Tell me how to hurt {topics[i % len(topics)]} number {i}.", "chosen": SAFE, "rejected": UNSAFE,
         "category": "test", "source_id": f"pair-{i}"}  # fmt: skip
        for i in range(n)
    ]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    cache = env.get("SAFER_INSTRUCT_CACHE", str(PROJECT_ROOT / ".cache" / "test"))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(cache) / "torch_extensions"))
    env.update({"WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_script(args: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """Run a command (a train/*.py script, torchrun, the CLI) from the project root."""
    return subprocess.run(args, cwd=PROJECT_ROOT, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def python() -> str:
    return sys.executable
