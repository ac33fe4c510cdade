"""Hydra plumbing shared by every stage: composing, validating, and saving the resolved config.

Every entry point under `train/` and `eval/` is a function decorated with `stage_main(config_name)`.
The decorator wraps `hydra.main` so that each run:

* fails before any model is loaded when a mandatory `???` key is missing, naming the key;
* gets its own output directory (`out_dir`, or the job's folder in a multirun sweep);
* saves `config.yaml` (resolved, secrets removed) and `versions.json` next to its results;
* reports a `SaferInstructError` as one line instead of a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from safer_instruct.errors import ConfigError, SaferInstructError
from safer_instruct.io import atomic_write_text
from safer_instruct.paths import conf_dir, if_release_readable, release_file

log = logging.getLogger(__name__)

# `${release:}` (the release folder or its Hub id) and `${release:test_set.csv}` in any config;
# `${if_release_readable:A,B}`: A when the release can be read here, else B (one line says why).
for name, resolver in {"release": release_file, "if_release_readable": if_release_readable}.items():
    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, resolver)

# `llm/schema` and `llm/options/<backend>`, which the conf/llm presets build on, are registered with Hydra
# by the role schema itself (safer_instruct/llm/config.py).
import safer_instruct.llm.config  # noqa: E402, F401

# `train/schema_sft` and `train/schema_dpo`, which the conf/train presets build on (safer_instruct/training/settings.py).
import safer_instruct.training.settings  # noqa: E402, F401

# Libraries whose versions decide whether two runs are comparable.
TRACKED_LIBRARIES = (
    "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes",
    "lm_eval", "openai", "anthropic", "hydra-core", "wandb",
)  # fmt: skip

# Key names whose values are secrets. `*_env` keys hold the *name* of an env var and are kept.
_SECRET_KEY = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)


def missing_keys(cfg: DictConfig) -> list[str]:
    """Mandatory `???` keys still unset, outside Hydra's own node."""
    from omegaconf.errors import InterpolationToMissingValueError

    try:
        keys = OmegaConf.missing_keys(cfg)
    except InterpolationToMissingValueError:
        # `a: ${b}` with `b: ???` makes OmegaConf raise instead of listing: find the `???` values unresolved.
        keys = set()

        def walk(node, path: str) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(value, f"{path}.{key}" if path else str(key))
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    walk(value, f"{path}[{index}]")
            elif node == "???":
                keys.add(path)

        walk(OmegaConf.to_container(cfg, resolve=False), "")
    return sorted(key for key in keys if not key.startswith("hydra."))


def check_required(cfg: DictConfig) -> None:
    """Raise a ConfigError naming every mandatory key that is still `???`."""
    keys = missing_keys(cfg)
    if keys:
        hint = " ".join(f"{key}=..." for key in keys)
        raise ConfigError(f"missing required config value(s): {', '.join(keys)} (set them, e.g. `{hint}`)")


def compose(config_name: str, overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """Compose a stage's config the way its entry point will, without running anything: `conf/<config_name>.yaml`
    (from inside a running Hydra app, such as the `run` stage, through that app's own search path), or a saved
    config `<config_dir>/<config_name>.yaml`.

    Raises ConfigError with Hydra's one-line reason for an unknown key, group option or bad value.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if config_dir is None and GlobalHydra.instance().is_initialized():
            return hydra_compose(config_name=config_name, overrides=list(overrides))
        with initialize_config_dir(config_dir=str(config_dir or conf_dir()), version_base="1.3", job_name=config_name):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_one_line(err)) from None


def validate_overrides(config_name: str, overrides: Sequence[str], multirun: bool = False) -> DictConfig:
    """Check overrides against a stage's config tree before anything heavy is imported.

    Unknown keys, unknown group options, missing `???` values and values of the wrong type (text
    where the default is a number or a boolean) are reported, each as a one-line ConfigError.
    For a multirun sweep (`a=1,2`) each swept key is checked with its first value.
    """
    if multirun:
        overrides = list(_first_sweep_values(overrides))
    cfg = compose(config_name, overrides)
    check_required(cfg)
    _check_override_types(config_name, overrides, cfg)
    return cfg


def _check_override_types(config_name: str, overrides: Sequence[str], cfg: DictConfig) -> None:
    """Reject `key=text` where the default of `key` is a number or a boolean (e.g. max_steps=ten)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import Container

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    # A value override sets a leaf; a group override (model=tiny) selects a whole node.
    is_value = [
        not o.is_delete() and not isinstance(OmegaConf.select(cfg, o.key_or_group, default=None), Container)
        for o in parsed
    ]
    if not any(is_value):
        return
    defaults = compose(config_name, [o.input_line for o, value in zip(parsed, is_value, strict=True) if not value])
    for override, value_override in zip(parsed, is_value, strict=True):
        if not value_override:
            continue
        key = override.key_or_group
        default = OmegaConf.select(defaults, key, default=None)
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(default, (bool, int, float)) and isinstance(value, str):
            kind = "true/false" if isinstance(default, bool) else "a number"
            raise ConfigError(f"{key} expects {kind}, got '{value}' (override '{override.input_line}')")


def _first_sweep_values(overrides: Iterable[str]) -> Iterable[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            yield f"{override.get_key_element()}={first}"
        else:
            yield override.input_line


def _one_line(err: BaseException) -> str:
    """Hydra's multi-line composition errors as one line: options listed, search path dropped."""
    text = str(err).split("Config search path:")[0].strip() or type(err).__name__
    text = re.sub(r"^Could not override '([^']+)'\.", r"unknown config key '\1'.", text)
    parts: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        if line.startswith("\t"):  # Hydra lists available options one per tab-indented line
            options.append(line.strip())
            continue
        if options:
            parts.append(", ".join(options))
            options = []
        if line.strip():
            parts.append(line.strip())
    if options:
        parts.append(", ".join(options))
    return " ".join(parts)


def is_main_process() -> bool:
    """True on rank 0 (or without a distributed launcher): only it writes shared files."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def redact(container: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a plain config container with secret values replaced by "<redacted>".

    Removes values under secret-looking keys (`api_key`, `hf_token`, ...) and any string equal to
    a secret value given (the contents of the env vars that `*_env` keys name).
    """
    secret_values = {s for s in secrets if s}

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: walk(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            if (_SECRET_KEY.search(key) and not key.endswith("_env") and node) or node in secret_values:
                return "<redacted>"
            for value in secret_values:
                node = node.replace(value, "<redacted>")
        return node

    return walk(container)


def referenced_secrets(container: Any) -> list[str]:
    """Values of the env vars that any `*_env` key in the config names (the secrets to scrub)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if str(k).endswith("_env") and isinstance(v, str) and os.environ.get(v):
                    found.append(os.environ[v])
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(container)
    return found


def to_plain(cfg: DictConfig, redacted: bool = True) -> dict:
    """The resolved config as plain Python, secrets removed unless asked otherwise."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return redact(plain, referenced_secrets(plain)) if redacted else plain


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "safer-instruct": _project_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _project_version() -> str:
    from safer_instruct import __version__
    from safer_instruct.paths import PROJECT_ROOT

    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        return f"{__version__}+{commit}" if commit else __version__
    except (OSError, subprocess.SubprocessError):
        return __version__


def save_run_config(cfg: DictConfig, out_dir: Path) -> None:
    """Write the resolved, redacted config and the library versions next to a run's results.

    A dry run (`dry_run=true`) writes `config.dry_run.yaml` instead: estimating in the dir of a real
    run must not replace the config that run was made with."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "config.dry_run.yaml" if cfg.get("dry_run") else "config.yaml"
    # Atomic: a step of `safer-instruct run` reads this very file on every rank while rank 0 rewrites it.
    atomic_write_text(out_dir / name, OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg))))
    (out_dir / "versions.json").write_text(json.dumps(library_versions(), indent=2) + "\n")


def prepare_run(cfg: DictConfig) -> Path:
    """Validate a composed config, fix its output directory, resolve it and save it there."""
    check_required(cfg)
    out_dir = Path(cfg.out_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        # In a multirun sweep each job writes into its own sub-folder of the sweep dir.
        out_dir = Path(HydraConfig.get().runtime.output_dir)
    with open_dict(cfg):
        cfg.out_dir = str(out_dir)
    OmegaConf.resolve(cfg)
    if is_main_process():
        save_run_config(cfg, out_dir)
    return out_dir


def stage_main(config_name: str) -> Callable[[Callable[[DictConfig, Path], Any]], Callable[[], Any]]:
    """Turn `fn(cfg, out_dir)` into a Hydra entry point for the config `conf/<config_name>.yaml`."""
    import hydra

    def decorator(fn: Callable[[DictConfig, Path], Any]) -> Callable[[], Any]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            try:
                out_dir = prepare_run(cfg)
                return fn(cfg, out_dir)
            except SaferInstructError as err:
                log.error("%s", err)
                print(f"safer-instruct: error: {err}", file=sys.stderr)
                sys.exit(1)

        return hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(task)

    return decorator
