"""Role presets (conf/llm), their parsing, and the managed servers' command lines."""

from __future__ import annotations

import shutil
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from safer_instruct.errors import ConfigError
from safer_instruct.llm import ServerConfig, parse_role
from safer_instruct.llm.cache import cache_key
from safer_instruct.llm.config import price_for
from safer_instruct.llm.servers import ManagedServer, transformers_command, vllm_command
from safer_instruct.llm.session import model_identity
from safer_instruct.llm.types import ChatRequest
from safer_instruct.paths import CONF_DIR


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """Every preset pulled into one config the way stage configs do (`- llm@role: preset`)."""
    conf = tmp_path_factory.mktemp("conf")
    shutil.copytree(CONF_DIR / "llm", conf / "llm")
    (conf / "probe.yaml").write_text(
        "defaults:\n  - llm@expert: openai\n  - llm@judge: anthropic\n  - llm@inducer: local\n"
        "  - llm@policy: inprocess\n  - llm@big: vllm\n  - _self_\n"
        "inducer: {model: kit:tiny}\npolicy: {model: kit:tiny}\nbig: {model: /models/llama-2-7b}\n"
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("probe", overrides=["expert.max_concurrency=3", "big.server.tensor_parallel_size=4"])


def test_presets_have_the_contract_keys_and_parse(composed):
    for name in ("expert", "judge", "inducer", "policy", "big"):
        node = composed[name]
        for key in ("model", "base_url", "api_key_env", "max_concurrency", "temperature", "max_tokens"):
            assert key in node, f"{name}.{key}"
    expert = parse_role("expert", composed.expert)
    assert (expert.backend, expert.model, expert.max_concurrency, expert.api_key_env) == ("openai", "gpt-4", 3, "OPENAI_API_KEY")
    assert not expert.managed and price_for(expert).output_per_mtok == 60.0
    judge = parse_role("judge", composed.judge)
    assert judge.backend == "anthropic" and judge.model.startswith("claude-3") and judge.api_key_env == "ANTHROPIC_API_KEY"
    inducer = parse_role("inducer", composed.inducer)
    assert inducer.managed and inducer.server.kind == "transformers" and inducer.sends_hf_generation_config
    policy = parse_role("policy", composed.policy)
    assert policy.backend == "inprocess" and policy.batch_size == 16
    big = parse_role("big", composed.big)
    assert big.server.kind == "vllm" and big.server.tensor_parallel_size == 4 and not big.sends_hf_generation_config


def test_local_preset_requires_a_model(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR / "llm", conf / "llm")
    (conf / "probe.yaml").write_text("defaults:\n  - llm@inducer: local\n  - _self_\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("probe")
    assert OmegaConf.missing_keys(cfg) == {"inducer.model"}
    with pytest.raises(ConfigError, match="inducer.model must be set"):
        parse_role("inducer", {"model": None})


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"model": "m", "backend": "grpc"}, "r.backend must be one of"),
        ({"model": "m", "max_concurrency": 0}, "r.max_concurrency must be >= 1"),
        ({"model": "m", "temperature": "hot"}, "r.temperature must be a float"),
        ({"model": "m", "api_key_env": "sk-abc123-xyz"}, "NAME of an environment variable"),
        ({"model": "m", "server": {"kind": "ollama"}}, "r.server.kind must be one of"),
    ],
)
def test_bad_role_values_name_the_key(node, message):
    with pytest.raises(ConfigError, match=message):
        parse_role("r", node)


def test_vllm_command_line():
    cfg = ServerConfig(kind="vllm", dtype="bfloat16", tensor_parallel_size=4, gpu_memory_utilization=0.85,
                       max_model_len=4096, extra_args=("--enable-prefix-caching",))  # fmt: skip
    cmd = vllm_command("/models/llama-2-7b", 8123, cfg)
    assert cmd[0].endswith("vllm") and cmd[1:3] == ["serve", "/models/llama-2-7b"]
    args = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert args["--host"] == "127.0.0.1" and args["--port"] == "8123"
    assert args["--tensor-parallel-size"] == "4" and args["--dtype"] == "bfloat16"
    assert args["--gpu-memory-utilization"] == "0.85" and args["--max-model-len"] == "4096"
    assert cmd[-1] == "--enable-prefix-caching"
    server = ManagedServer("llama2-7b", "/models/llama-2-7b", cfg)
    assert server.command(9000)[server.command(9000).index("--port") + 1] == "9000"


def test_transformers_command_line():
    cmd = transformers_command("/m", 8000, ServerConfig(device="cpu", extra_args=("--log-level", "info")))
    assert cmd[:5] == [sys.executable, "-m", "transformers.cli.transformers", "serve", "/m"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8000"
    assert cmd[cmd.index("--device") + 1] == "cpu" and cmd[-2:] == ["--log-level", "info"]


def test_cache_key_covers_model_input_sampling_and_sample_index(tiny_model, tmp_path):
    request = ChatRequest(id="a", messages=({"role": "user", "content": "hi"},))
    params = {"temperature": 0.7, "max_tokens": 10, "top_p": None, "stop": None, "seed": None}
    base = cache_key("m", request, params)
    assert cache_key("m", ChatRequest(id="other-id", messages=request.messages), params) == base  # id is not content
    assert cache_key("m2", request, params) != base
    assert cache_key("m", ChatRequest(id="a", messages=({"role": "user", "content": "hi!"},)), params) != base
    assert cache_key("m", ChatRequest(id="a", messages=request.messages, sample_index=1), params) != base
    assert cache_key("m", request, {**params, "temperature": 0.0}) != base
    assert cache_key("m", ChatRequest(id="a", prompt="hi"), params) != base
    # Local weights are identified by content: kit:tiny and its folder are one model; a copy too.
    assert model_identity("kit:tiny") == model_identity(tiny_model)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert model_identity(str(copy)) == model_identity(tiny_model)
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:-8] + b"retrain!")
    assert model_identity(str(copy)) != model_identity(tiny_model)
    assert model_identity("gpt-4") == "gpt-4"
