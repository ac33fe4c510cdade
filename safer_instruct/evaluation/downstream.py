"""Downstream ability with lm-evaluation-harness, called from Python.

The model runs in process (`HFLM` around the model we load, so a checkpoint of ours, a kit model or a
hub id all work the same) or behind an OpenAI-compatible server (`local-completions` /
`local-chat-completions`). The chat template is applied when the model preset's `prompt_format` is
`chat` (`harness.chat_template: auto`), never for Alpaca-format models, whose training prompts are
not chat turns.

Task lists name the harness's own tasks (mmlu, arc_challenge, hellaswag, truthfulqa_mc2) or local
ones from `include_path` (conf/lm_eval_tasks: offline tests and the demo). With
`include_defaults: false` lm-eval does not index its ~10k bundled tasks (8 s saved).

Context length: the harness sees `harness.max_length`, which defaults to the model preset's
`context_length` (2048 for LLaMA-7B / Alpaca-7B), not the training `model.max_length` (512 in the paper
recipes): few-shot contexts longer than the training length are what these benchmarks hold. When
both are unset, HFLM reads the model config (`max_position_embeddings`). The length used is recorded
in `settings.max_length`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError
from safer_instruct.paths import PROJECT_ROOT

log = logging.getLogger(__name__)

# The metric reported for each well-known task (ours: the usual choice, acc_norm where lm-eval offers length
# normalisation); other tasks use their first metric.
DEFAULT_PRIMARY_METRICS = {
    "arc_challenge": "acc_norm",
    "arc_easy": "acc_norm",
    "hellaswag": "acc_norm",
    "truthfulqa_mc2": "acc",
    "mmlu": "acc",
}

# Settings recorded in downstream.json under the names lm_eval.simple_evaluate takes them by.
SIMPLE_EVALUATE_SETTINGS = ("num_fewshot", "limit", "bootstrap_iters", "fewshot_as_multiturn", "system_instruction",
                            "gen_kwargs")  # fmt: skip


def use_chat_template(setting: Any, prompt_format: str) -> bool:
    """`auto` follows the model preset (chat -> on, alpaca -> off); true/false force it."""
    choices = {"auto": prompt_format == "chat", "true": True, "on": True, "false": False, "off": False}
    choice = setting if isinstance(setting, bool) else choices.get(str(setting).lower())
    if choice is None:
        raise ConfigError(f"harness.chat_template must be auto, true or false, got '{setting}'")
    return choice


def task_manager(include_path: str | None, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    path = None
    if include_path:
        folder = Path(str(include_path)).expanduser()
        folder = folder if folder.is_absolute() else PROJECT_ROOT / folder
        if not folder.is_dir():
            raise ConfigError(f"harness.include_path: task folder {folder} not found")
        path = str(folder)
    return TaskManager(include_path=path, include_defaults=bool(include_defaults))


def check_tasks(manager, tasks: list[str]) -> None:
    """Fail before loading the model when a task name is unknown to the harness."""
    known = set(manager.all_tasks)
    unknown = [task for task in tasks if task not in known]
    if unknown:
        hint = "" if known and len(known) > 50 else f" (known here: {', '.join(sorted(known))})"
        raise ConfigError(f"tasks: unknown lm-eval task(s) {', '.join(unknown)}{hint}")


def build_lm(model_cfg: Mapping[str, Any], harness: Mapping[str, Any], chat: bool):
    """The harness model: in-process HFLM, or an OpenAI-compatible endpoint."""
    backend = str(harness.get("backend") or "hf")
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        from safer_instruct.model_kit import load_causal_lm, load_tokenizer

        device = str(harness.get("device") or "auto")
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_causal_lm(str(model_cfg["path"]), str(model_cfg.get("dtype") or "auto"))
        tokenizer = load_tokenizer(str(model_cfg["path"]))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return HFLM(
            pretrained=model.to(device),
            tokenizer=tokenizer,
            batch_size=harness.get("batch_size") or 1,
            device=device,
            max_length=harness.get("max_length"),  # None: HFLM reads the model config
        )
    if backend == "api":
        import lm_eval.api.registry as registry
        import lm_eval.models  # noqa: F401  (registers the API model classes)

        base_url = harness["base_url"]  # given, or that of the server `served` started
        name = "local-chat-completions" if chat else "local-completions"
        endpoint = "chat/completions" if chat else "completions"
        args = {
            "model": harness.get("served_model") or model_cfg["path"],
            "base_url": f"{str(base_url).rstrip('/')}/{endpoint}",
            "num_concurrent": int(harness.get("num_concurrent") or 1),
            "max_retries": int(harness.get("max_retries") or 3),
            "tokenized_requests": False,
        }
        if harness.get("max_length"):
            args["max_length"] = int(harness["max_length"])
        tokenizer = harness.get("tokenizer") or _local_model(str(model_cfg["path"]))
        if tokenizer:  # lm-eval counts tokens with it; by default it loads the served name from the hub
            args["tokenizer"] = tokenizer
        return registry.get_model(name)(**args)
    raise ConfigError(f"harness.backend must be hf or api, got '{backend}'")


@contextlib.contextmanager
def served(model_cfg: Mapping[str, Any], harness: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """For backend=api without a base_url: serve model.path on loopback for the run (the LLM layer's
    managed server: transformers serve, or vLLM with `harness.server.kind=vllm`), then stop it."""
    harness = dict(harness)
    if str(harness.get("backend") or "hf") != "api" or harness.get("base_url"):
        yield harness
        return
    from safer_instruct.llm.config import parse_role
    from safer_instruct.llm.servers import ManagedServer
    from safer_instruct.model_kit import resolve_model

    role = parse_role("harness", {"model": model_cfg["path"], "server": dict(harness.get("server") or {})})
    server = ManagedServer(str(model_cfg["path"]), resolve_model(str(model_cfg["path"])), role.options.server)
    server.start()
    try:
        yield {**harness, "base_url": server.base_url, "served_model": server.served_model}
    finally:
        server.stop()


def _local_model(ref: str) -> str | None:
    """The local folder of a model reference, or None when it is not on this machine."""
    from safer_instruct.errors import ModelNotFoundError
    from safer_instruct.model_kit import resolve_model

    try:
        path = resolve_model(ref)
    except ModelNotFoundError:
        return None
    return path if Path(path).is_dir() else None


def primary_metric(
    task: str, metrics: Mapping[str, Any], overrides: Mapping[str, str]
) -> tuple[str | None, Any, Any]:
    """(metric name, value, stderr) of the metric reported for a task."""
    wanted = overrides.get(task) or DEFAULT_PRIMARY_METRICS.get(task)
    names = [key for key in metrics if "," in key and "_stderr" not in key]
    chosen = next((key for key in names if key.split(",")[0] == wanted), names[0] if names else None)
    if chosen is None:
        return None, None, None
    metric, _, filt = chosen.partition(",")
    stderr = metrics.get(f"{metric}_stderr,{filt}")
    return metric, metrics[chosen], stderr if isinstance(stderr, (int, float)) else None


def run_downstream(
    model_cfg: Mapping[str, Any], tasks: list[str], harness: Mapping[str, Any], seed: int = 0
) -> dict[str, Any]:
    """Evaluate a model on lm-eval tasks; returns the summary saved as `downstream.json`.

    The raw harness results (without per-sample logs) are under the key `lm_eval`.
    """
    import lm_eval

    if not tasks:
        raise ConfigError("tasks: give at least one lm-eval task, e.g. tasks=[arc_challenge,hellaswag]")
    manager = task_manager(harness.get("include_path"), harness.get("include_defaults", True))
    check_tasks(manager, tasks)
    chat = use_chat_template(
        harness.get("chat_template", "auto"), str(model_cfg.get("prompt_format") or "chat")
    )
    backend = str(harness.get("backend") or "hf")
    settings = {
        "tasks": list(tasks),
        "backend": backend,
        "num_fewshot": harness.get("num_fewshot"),
        "limit": harness.get("limit"),
        "batch_size": harness.get("batch_size"),
        "chat_template": chat,
        "fewshot_as_multiturn": bool(chat and harness.get("fewshot_as_multiturn", True)),
        "system_instruction": harness.get("system_instruction") or (model_cfg.get("system_prompt") if chat else None),
        "bootstrap_iters": int(harness.get("bootstrap_iters") or 0),
        "served": str(harness.get("base_url") or "managed loopback server") if backend == "api" else None,
        "gen_kwargs": dict(harness.get("gen_kwargs") or {}) or None,
        "seed": seed,
        "include_path": harness.get("include_path"),
    }
    started = time.perf_counter()
    with served(model_cfg, harness) as harness_run:
        lm = build_lm(model_cfg, harness_run, chat)
        # The context the harness truncates to: HFLM's (given or read from the model config); for a
        # server, what was passed (null: lm-eval's own default).
        settings["max_length"] = int(lm.max_length) if backend == "hf" else harness.get("max_length")
        try:
            results = lm_eval.simple_evaluate(
                model=lm, tasks=list(tasks), apply_chat_template=chat, task_manager=manager, log_samples=False,
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                **{key: settings[key] for key in SIMPLE_EVALUATE_SETTINGS},
            )
        except (KeyError, TypeError, NotImplementedError) as err:
            if backend != "api":
                raise
            raise ConfigError(
                f"the server cannot score these tasks ({type(err).__name__}: {err}): multiple-choice tasks need "
                "prompt log-probabilities, which chat endpoints and transformers serve do not return; use "
                "harness.backend=hf, or a vLLM server with chat_template=false"
            ) from None
    elapsed = time.perf_counter() - started
    if not results:  # simple_evaluate returns None on non-zero ranks
        return {}
    overrides = dict(harness.get("primary_metrics") or {})
    scores: dict[str, Any] = {}
    for task, metrics in results["results"].items():
        metric, value, stderr = primary_metric(task, metrics, overrides)
        scores[task] = {"metric": metric, "value": value, "stderr": stderr,
                        "n": (results.get("n-samples") or {}).get(task, {}).get("effective")}  # fmt: skip
    raw = {key: results.get(key) for key in ("results", "groups", "group_subtasks", "configs", "versions",
                                             "n-shot", "higher_is_better", "n-samples", "config")}  # fmt: skip
    return {
        "scores": scores,
        "settings": settings,
        "task_versions": results.get("versions", {}),
        "n_shot": results.get("n-shot", {}),
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
        "wall_s": round(elapsed, 2),
        "lm_eval": raw,
    }
