"""The `vllm serve` command line the framework builds would start vLLM, checked without vLLM installed.

`VLLM_SERVE` below mirrors the part of vLLM's `serve` command line the framework uses (flag names,
types and the `--dtype` choices as vLLM's engine-arguments documentation lists them), and
`vllm_would_refuse` the start-up checks vLLM makes against the model's config.json (a max model
length above the model's, a tensor parallel size that does not divide the attention heads). A
command from a preset must parse and pass them; a preset vLLM would refuse must fail earlier, in
our code, with a ConfigError naming both numbers.

The model configs are the shapes of real checkpoints written into a folder (config.json only, no
weights): LLaMA-1 7B (`huggyllama/llama-7b`: 2048 positions, 32 heads; known from its config.json
and the LLaMA paper's 2048-token context), a GQA model and a sliding-window model (ours).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from safer_instruct.errors import ConfigError
from safer_instruct.llm import ServerConfig, parse_role
from safer_instruct.llm.servers import VLLM_DTYPES, model_config_json, vllm_command, vllm_max_model_len
from safer_instruct.paths import CONF_DIR

LLAMA1_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "num_attention_heads": 32, "num_hidden_layers": 32, "max_position_embeddings": 2048}  # fmt: skip


def serve_parser() -> argparse.ArgumentParser:
    """The `vllm serve` arguments the framework passes, as vLLM declares them (types and choices)."""
    parser = argparse.ArgumentParser(prog="vllm serve", exit_on_error=False)
    parser.add_argument("model")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"], default="auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--enable-prefix-caching", action="store_true")
    parser.add_argument("--disable-sliding-window", action="store_true")
    return parser


def vllm_would_refuse(args: argparse.Namespace) -> str | None:
    """vLLM's start-up checks against the model's config.json (None: it starts)."""
    config = json.loads((Path(args.model) / "config.json").read_text())
    if args.tensor_parallel_size < 1:
        return "tensor parallel size must be positive"
    if config["num_attention_heads"] % args.tensor_parallel_size:
        return "Total number of attention heads must be divisible by tensor parallel size"
    derived = config["max_position_embeddings"]
    if args.disable_sliding_window and config.get("sliding_window"):
        derived = min(derived, config["sliding_window"])
    if args.max_model_len is not None and args.max_model_len > derived:
        return "User-specified max_model_len is greater than the derived max_model_len"
    if not 0 < args.gpu_memory_utilization <= 1:
        return "gpu_memory_utilization must be in (0, 1]"
    return None


def model_folder(root: Path, name: str, config: dict) -> str:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def parsed(cmd: list[str]) -> argparse.Namespace:
    assert Path(cmd[0]).name == "vllm" and cmd[1] == "serve"
    return serve_parser().parse_args(cmd[2:])  # an unknown flag or a bad choice raises here


@pytest.fixture(scope="module")
def vllm_preset(tmp_path_factory):
    """conf/llm/vllm.yaml as a stage config pulls it in (`- llm@policy: vllm`), unparsed."""
    conf = tmp_path_factory.mktemp("conf")
    shutil.copytree(CONF_DIR / "llm", conf / "llm")
    (conf / "probe.yaml").write_text("defaults:\n  - llm@policy: vllm\n  - _self_\npolicy: {model: unset}\n")

    def role(model: str, *overrides: str):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("probe", overrides=[f"policy.model={model}", *overrides])
        return parse_role("policy", cfg.policy)

    return role


def test_the_preset_follows_the_model_length_and_vllm_accepts_it(vllm_preset, tmp_path):
    llama = model_folder(tmp_path, "llama-7b", LLAMA1_7B)
    role = vllm_preset(llama)
    assert role.options.server.max_model_len is None  # the preset leaves the length to the model
    args = parsed(vllm_command(llama, 8000, role.options.server))
    assert args.max_model_len == 2048 and args.tensor_parallel_size == 1 and args.dtype == "auto"
    assert vllm_would_refuse(args) is None


def test_the_preset_with_the_tiny_kit_model(vllm_preset, tiny_model):
    args = parsed(vllm_command(tiny_model, 8000, vllm_preset(tiny_model).options.server))
    assert args.max_model_len == json.loads((Path(tiny_model) / "config.json").read_text())["max_position_embeddings"]
    assert vllm_would_refuse(args) is None


def test_a_length_above_the_model_fails_naming_both_numbers(vllm_preset, tmp_path):
    llama = model_folder(tmp_path, "llama-7b", LLAMA1_7B)
    server = vllm_preset(llama, "policy.server.max_model_len=4096").options.server
    # What vLLM itself would do with that command line:
    unchecked = serve_parser().parse_args([llama, "--max-model-len", "4096"])
    assert "greater than the derived" in vllm_would_refuse(unchecked)
    with pytest.raises(ConfigError, match=r"max_model_len=4096 .* 2048 tokens .*max_position_embeddings"):
        vllm_command(llama, 8000, server)
    shorter = parsed(vllm_command(llama, 8000, vllm_preset(llama, "policy.server.max_model_len=1024").options.server))
    assert shorter.max_model_len == 1024 and vllm_would_refuse(shorter) is None


@pytest.mark.parametrize(("tensor_parallel", "accepted"), [(1, True), (2, True), (4, True), (8, True), (3, False), (6, False)])
def test_tensor_parallel_size_must_divide_the_attention_heads(vllm_preset, tmp_path, tensor_parallel, accepted):
    llama = model_folder(tmp_path, "llama-7b", LLAMA1_7B)
    server = vllm_preset(llama, f"policy.server.tensor_parallel_size={tensor_parallel}").options.server
    if accepted:
        args = parsed(vllm_command(llama, 8000, server))
        assert args.tensor_parallel_size == tensor_parallel and vllm_would_refuse(args) is None
    else:
        with pytest.raises(ConfigError, match=rf"tensor_parallel_size={tensor_parallel} does not divide the 32 attention heads"):
            vllm_command(llama, 8000, server)


def test_tensor_parallel_size_must_be_positive(tmp_path):
    llama = model_folder(tmp_path, "llama-7b", LLAMA1_7B)
    with pytest.raises(ConfigError, match="tensor_parallel_size must be a positive"):
        vllm_command(llama, 8000, ServerConfig(kind="vllm", tensor_parallel_size=0))


def test_key_value_heads_of_a_gqa_model(tmp_path):
    gqa = model_folder(tmp_path, "gqa", {**LLAMA1_7B, "num_attention_heads": 40, "num_key_value_heads": 10})
    # 40 heads / 4 GPUs is fine, but 10 key/value heads neither split over 4 nor replicate to 4.
    with pytest.raises(ConfigError, match="10 key/value heads"):
        vllm_max_model_len(gqa, ServerConfig(kind="vllm", tensor_parallel_size=4))
    assert vllm_max_model_len(gqa, ServerConfig(kind="vllm", tensor_parallel_size=5)) == 2048  # 2 kv heads per GPU
    assert vllm_max_model_len(gqa, ServerConfig(kind="vllm", tensor_parallel_size=20)) == 2048  # kv heads replicated


@pytest.mark.parametrize("dtype", VLLM_DTYPES)
def test_every_dtype_we_accept_is_a_vllm_choice(tmp_path, dtype):
    llama = model_folder(tmp_path, "llama-7b", LLAMA1_7B)
    assert parsed(vllm_command(llama, 8000, ServerConfig(kind="vllm", dtype=dtype))).dtype == dtype


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "float64", "int8"])
def test_a_dtype_vllm_does_not_know_fails_listing_the_choices(tmp_path, dtype):
    llama = model_folder(tmp_path, "llama-7b", LLAMA1_7B)
    with pytest.raises(argparse.ArgumentError):
        serve_parser().parse_args([llama, "--dtype", dtype])
    with pytest.raises(ConfigError, match=rf"server.dtype '{dtype}' is not one of vLLM's --dtype choices: auto, half"):
        vllm_command(llama, 8000, ServerConfig(kind="vllm", dtype=dtype))


def test_sliding_window_and_rope_scaling_change_the_model_length(tmp_path):
    mistral = model_folder(tmp_path, "sw", {**LLAMA1_7B, "max_position_embeddings": 32768, "sliding_window": 4096})
    assert vllm_max_model_len(mistral, ServerConfig(kind="vllm")) == 32768
    no_window = ServerConfig(kind="vllm", extra_args=("--disable-sliding-window",))
    args = parsed(vllm_command(mistral, 8000, no_window))
    assert args.max_model_len == 4096 and vllm_would_refuse(args) is None
    scaled = model_folder(tmp_path, "rope", {**LLAMA1_7B, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    assert vllm_max_model_len(scaled, ServerConfig(kind="vllm")) == 4096
    assert vllm_max_model_len(scaled, ServerConfig(kind="vllm", max_model_len=4096)) == 4096


def test_a_model_whose_config_is_not_here_is_left_to_vllm(tmp_path):
    # A hub id that was never downloaded: nothing to read offline; vLLM derives the length itself.
    assert model_config_json("no-such-org/no-such-model") is None
    assert vllm_max_model_len("no-such-org/no-such-model", ServerConfig(kind="vllm")) is None
    cmd = vllm_command("no-such-org/no-such-model", 8000, ServerConfig(kind="vllm", max_model_len=4096))
    assert cmd[cmd.index("--max-model-len") + 1] == "4096"
