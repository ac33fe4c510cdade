"""Launch plumbing, so that the entry scripts run the same under python, accelerate, torchrun and srun.

* `slurm_to_torch_env()`: `srun python train/dpo.py ...` starts one process per task with only SLURM_*
  variables; we derive RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from them (nothing
  is changed when a launcher already set them, e.g. `srun accelerate launch` or `srun torchrun`).
* `single_process_env()`: DeepSpeed wants a process group even for one process; a plain
  `python train/sft.py train.deepspeed=zero2` gets a loopback one on a free port.
* `deepspeed_process_group()`: the above, and on CPU with several processes DeepSpeed's own
  communication layer over gloo before the model is loaded (see its docstring).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess


def slurm_to_torch_env() -> bool:
    """Fill torch.distributed variables from Slurm's when srun started us directly. True if it did."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return False
    tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if tasks <= 1:
        return False
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = str(tasks)
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
    os.environ.setdefault("MASTER_ADDR", first_host(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")))
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
    return True


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`node[01-04],gpu7` -> node01), via scontrol when present."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        return nodelist
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_process_env() -> None:
    """Give a launcher-less process the variables of a one-process group (for DeepSpeed)."""
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def deepspeed_process_group(configured: bool) -> None:
    """Prepare the process group a DeepSpeed run needs, before any model is loaded; a no-op without
    DeepSpeed (`configured`: train.deepspeed is set; `accelerate launch` with a DeepSpeed config says so itself).

    On GPUs accelerate initializes DeepSpeed's communication layer itself. On CPU it only starts a
    torch gloo group, and DeepSpeed's layer stays uninitialized: ZeRO-3's `zero.Init`, which
    `from_pretrained` enters to load the weights partitioned, then counts one process and rejects
    the batch sizes of 2 or more ("train_batch_size is not equal to micro_batch_per_gpu *
    gradient_acc_step * world_size"). So on CPU with several processes we initialize it over gloo
    here (accelerate then finds the torch group started and uses it).
    """
    if not configured and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    single_process_env()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch

    if torch.cuda.is_available():
        return
    from deepspeed import comm

    if not comm.is_initialized():
        comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
