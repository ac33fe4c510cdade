"""Role presets (conf/llm), their parsing, and the managed servers' command lines."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import typing

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from safer_instruct.errors import ConfigError
from safer_instruct.identity import model_identity
from safer_instruct.llm import LLMSession, RoleConfig, ServerConfig, parse_role
from safer_instruct.llm.backends import _REGISTRY, Answer, Backend, backend_class, backend_names
from safer_instruct.llm.backends.openai import OpenAIBackend
from safer_instruct.llm.cache import cache_key
from safer_instruct.llm.config import options_node, price_for, schema_node
from safer_instruct.llm.servers import ManagedServer, transformers_command, vllm_command
from safer_instruct.llm.types import ChatRequest, Usage
from safer_instruct.paths import CONF_DIR
from safer_instruct.schema import setting


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
    assert inducer.managed and inducer.options.server.kind == "transformers"
    assert OpenAIBackend.sends_generation_config(inducer)
    policy = parse_role("policy", composed.policy)
    assert policy.backend == "inprocess" and policy.options.batch_size == 16
    big = parse_role("big", composed.big)
    assert big.options.server.kind == "vllm" and big.options.server.tensor_parallel_size == 4
    assert not OpenAIBackend.sends_generation_config(big)


def test_seeded_samples_on_transformers_serve_need_one_request_at_a_time(composed):
    """transformers serve seeds one global generator per request: seeded samples repeat only one at a time."""
    node = OmegaConf.to_container(composed.inducer)
    seeded = parse_role("inducer", {**node, "seed": 42, "temperature": 0.8, "max_concurrency": 4})
    assert "inducer.max_concurrency=1" in OpenAIBackend.unreproducible_samples(seeded)
    for change in ({"max_concurrency": 1}, {"seed": None}, {"temperature": 0.0}, {"base_url": "http://127.0.0.1:9"}):
        assert OpenAIBackend.unreproducible_samples(parse_role("inducer", {**node, "seed": 42, "temperature": 0.8,
                                                                            "max_concurrency": 4, **change})) is None
    big = parse_role("big", {**OmegaConf.to_container(composed.big), "seed": 1, "temperature": 0.8})
    assert OpenAIBackend.unreproducible_samples(big) is None  # vLLM seeds each request


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


# --- one schema: RoleConfig and the backends' options are the only source of a role's defaults ---

PRESETS = ("local", "openai", "anthropic", "inprocess", "vllm")


def role_keys(backend: str) -> dict:
    """Every key of a role of `backend`, with its default, as the schema's dataclasses declare them."""
    fields = {f.name: f for f in (*dataclasses.fields(RoleConfig), *dataclasses.fields(backend_class(backend).Options))
              if f.name not in ("name", "options")}  # fmt: skip
    keys = {**schema_node(), **options_node(backend), "backend": backend}
    assert set(fields) <= set(keys)  # the node also holds the default backend's options (see schema_node)
    return keys


def compose_role(tmp_path, preset: str, *overrides: str):
    """A role node as a stage config pulls it in (`- llm@r: preset`), from a copy of conf/llm."""
    conf = tmp_path / "conf"
    if not conf.exists():
        shutil.copytree(CONF_DIR / "llm", conf / "llm")
    (conf / "probe.yaml").write_text(f"defaults:\n  - llm@r: {preset}\n  - _self_\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("probe", overrides=list(overrides)).r


def test_a_role_from_python_defaults_equals_one_from_the_minimal_yaml(tmp_path):
    for backend in backend_names():
        # The smallest preset of a backend: the schema, the backend's options, its name.
        compose_role(tmp_path, "schema")  # copies conf/llm
        (tmp_path / "conf" / "llm" / f"minimal_{backend}.yaml").write_text(
            f"defaults:\n  - schema\n  - options/{backend}@_here_\n  - _self_\nbackend: {backend}\n")
        node = compose_role(tmp_path, f"minimal_{backend}", "r.model=m")
        assert set(node) == set(role_keys(backend)) and OmegaConf.to_container(node) == {**role_keys(backend), "model": "m"}
        from_yaml = parse_role("r", node)
        assert from_yaml == RoleConfig(name="r", model="m", backend=backend) == parse_role("r", {"model": "m", "backend": backend})
        assert from_yaml.options == backend_class(backend).Options()
    default = RoleConfig(name="r", model="m")
    assert (default.max_concurrency, default.timeout_s, default.max_retries, default.backoff.max_s) == (8, 120.0, 4, 60.0)
    assert default.verdict_prefill is None and default.options.server.kind == "transformers"
    # The local preset overrides for CPU servers, and says so; Hydra-built local roles keep today's values.
    local = parse_role("r", compose_role(tmp_path, "local", "r.model=m"))
    assert (local.max_concurrency, local.timeout_s, local.max_retries, local.backoff.max_s) == (4, 300.0, 2, 30.0)
    assert local.verdict_prefill == '{"verdict": "' and local.backoff.initial_s == 1.0


def _stray_keys(body: dict, types: dict[str, typing.Any], where: str = "") -> list[str]:
    """Keys of `body` that are not fields (`types`: field name -> type), nested mappings included."""
    stray = []
    for key, value in body.items():
        if key not in types:
            stray.append(f"{where}{key}")
            continue
        nested = next((t for t in (types[key], *typing.get_args(types[key])) if dataclasses.is_dataclass(t)), None)
        if nested is not None and isinstance(value, dict):
            stray += _stray_keys(value, typing.get_type_hints(nested), f"{where}{key}.")
    return stray


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_key_is_a_schema_field_and_none_restates_its_parent(tmp_path, preset):
    body = yaml.safe_load((CONF_DIR / "llm" / f"{preset}.yaml").read_text())
    parent = body.pop("defaults")[0]  # the schema, or the preset this one builds on
    role = parse_role("r", compose_role(tmp_path, preset, "r.model=m"))
    fields = {**typing.get_type_hints(RoleConfig), **typing.get_type_hints(backend_class(role.backend).Options)}
    assert _stray_keys(body, fields) == [], f"keys of conf/llm/{preset}.yaml that backend '{role.backend}' does not have"
    assert _stray_keys({"backoff": {"initial": 1}, "server": {"kind": "vllm"}, "sever": {}}, fields) == (
        ["backoff.initial", "sever"] if role.backend == "openai" else ["backoff.initial", "server", "sever"])
    inherited = compose_role(tmp_path, parent, "r.model=m")

    def leaves(node: dict, prefix: str = ""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    restated = [key for key, value in leaves(body) if OmegaConf.select(inherited, key) == value]
    assert restated == [], f"conf/llm/{preset}.yaml restates what {parent} already gives"


def test_a_backend_is_one_class_that_registers_itself(tmp_path):
    """The smallest possible backend, defined here as a new module would define it: selected by name,
    its own keys read from the role node (with their errors), and answered through the session
    (cache, counters) like any other."""

    @dataclasses.dataclass(frozen=True)
    class EchoOptions:
        shout: bool = setting(False, "Answer in capitals.")
        repeat: int = setting(1, "Times the prompt is echoed.", minimum=1)

    class EchoBackend(Backend):
        name = "echo"
        Options = EchoOptions

        async def complete(self, request, params):
            text = " ".join([request.prompt] * self.options.repeat)
            return Answer(text.upper() if self.options.shout else text, "stop", Usage(1, 1), self.role.model)

    try:
        assert "echo" in backend_names() and backend_class("echo") is EchoBackend
        assert options_node("echo") == {"shout": False, "repeat": 1}
        with pytest.raises(ConfigError, match="r.repeat must be >= 1, got 0"):
            parse_role("r", {"model": "m", "backend": "echo", "repeat": 0})
        role = parse_role("r", {"model": "m", "backend": "echo", "repeat": "2", "batch_size": 3})
        assert role.options == EchoOptions(repeat=2) and not role.managed and role.prefill_support == "none"
        requests = [ChatRequest(id=f"q{i}", prompt=f"hi {i}") for i in range(3)]
        for expected_hits in (0, 3):
            with LLMSession(roles={"r": role}, cache_dir=tmp_path) as session:
                answers = {r.request_id: r.text for r in session.role("r").generate(requests)}
                assert session.role("r").stats("default")["cache_hits"] == expected_hits
            assert answers == {"q0": "hi 0 hi 0", "q1": "hi 1 hi 1", "q2": "hi 2 hi 2"}
    finally:
        _REGISTRY.pop("echo", None)
