"""From an experiment preset to an ordered list of steps, each one `safer-instruct STAGE overrides...`.

An experiment preset (`conf/experiment/NAME.yaml`) lists its steps under `experiment.steps`:

    dpo:
      stage: train dpo                      # the words of a stage in safer_instruct.cli.STAGES
      args:                                 # nested keys, flattened into Hydra overrides
        model: tiny                         #   -> model=tiny
        model.path: "@{sft}/model"          #   @{step} is that step's output dir: a dependency
        train: {beta: "${train.beta}"}      #   -> train.beta=0.1 (a knob a sweep can vary)
        llm@expert: inprocess               #   -> llm@expert=inprocess (a defaults-list choice)
      overrides: []                         # raw overrides appended as given (optional)
      outputs: [model/config.json]          # files the stage must leave in its out_dir
      after: []                             # extra dependencies without a @{ref} (optional)
      group: null                           # out_dir <experiment dir>/<group>/<step>; `@{group}` is
                                            #   that folder and depends on all its steps (a report
                                            #   row per group: one model's evaluations together)
      profile: train                        # Slurm resource profile (default: by stage)
      resources: {}                         # per-step Slurm resources over the profile's
      enabled: true

Every step gets its own out_dir `<experiment dir>/[<group>/]<step>`. The dependency graph is read from the
`@{step}` references, so it always matches the data flow. A step's fingerprint hashes its stage, its
arguments (with references kept symbolic) and the fingerprints of the steps it needs: a change
anywhere upstream changes it, a change of output location does not (sweep points share steps).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safer_instruct.errors import ConfigError

REF = re.compile(r"@\{([A-Za-z_][A-Za-z0-9_]*)\}")
STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Resource profile of a step when the preset names none, by the stage's first word.
PROFILE_BY_STAGE = {"train": "train", "construct": "generate", "eval": "eval", "report": "cpu"}
# Keys of conf/common.yaml that the run passes on to every stage, so one experiment shares them.
FORWARDED_COMMON = ("seed", "cache.dir", "tracking.mode", "tracking.project", "tracking.entity", "tracking.group")
# Of those, the ones that change what a stage computes (part of the fingerprint).
FINGERPRINTED_COMMON = ("seed",)


@dataclass
class Step:
    name: str
    stage: tuple[str, ...]
    # (key, value) pairs from `args` and raw override strings from `overrides`, `@{step}` unreplaced
    args: list[tuple[str, Any] | str]
    outputs: tuple[str, ...]
    deps: tuple[str, ...]
    profile: str
    resources: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    fingerprint: str = ""

    @property
    def stage_name(self) -> str:
        return " ".join(self.stage)


@dataclass
class Plan:
    """An experiment's steps in dependency order, and where each one writes."""

    name: str
    exp_dir: Path
    steps: dict[str, Step]
    common: list[str]  # forwarded overrides (seed, cache.dir, tracking.*)
    report_step: str | None = None

    def step_dir(self, name: str) -> Path:
        group = self.steps[name].group if name in self.steps else None
        return self.exp_dir / group / name if group else self.exp_dir / name

    def ref_dir(self, name: str) -> Path:
        """The folder `@{name}` stands for: a step's out_dir, or a group's folder."""
        return self.step_dir(name) if name in self.steps else self.exp_dir / name

    def resolve(self, value: Any) -> Any:
        """Replace `@{step}` / `@{group}` references (in strings, lists, mappings) by their folder."""
        if isinstance(value, str):
            return REF.sub(lambda m: str(self.ref_dir(m.group(1))), value)
        if isinstance(value, (list, tuple)):
            return [self.resolve(v) for v in value]
        if isinstance(value, Mapping):
            return {k: self.resolve(v) for k, v in value.items()}
        return value

    def overrides(self, name: str) -> list[str]:
        """The complete overrides of a step's command: common keys, its own, then its out_dir."""
        own = [a if isinstance(a, str) else f"{a[0]}={hydra_value(a[1])}" for a in map(self.resolve, self.steps[name].args)]
        return [*self.common, *own, f"out_dir={hydra_value(str(self.step_dir(name)))}"]

    def command(self, name: str) -> list[str]:
        """`safer-instruct` arguments of a step: stage words and overrides."""
        return [*self.steps[name].stage, *self.overrides(name)]

    def dependents(self, name: str) -> list[str]:
        return [s.name for s in self.steps.values() if name in s.deps]

    def edges(self) -> list[tuple[str, str]]:
        """(upstream, downstream) pairs in plan order."""
        return [(dep, step.name) for step in self.steps.values() for dep in step.deps]


# --- Hydra override syntax ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _parses_as(text: str, value: str) -> bool:
    try:
        parsed = _parser().parse_override(f"k={text}").value()
    except Exception:  # noqa: BLE001 - any parse failure means "quote it"
        return False
    return isinstance(parsed, str) and parsed == value


def _quote(value: str) -> str:
    # Inside quotes Hydra still interpolates `${...}`, reads `\'` as a quote, and wants the
    # backslashes right before a quote (or the closing quote) doubled; others are literal.
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value.replace("${", "\\${"))
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def hydra_value(value: Any) -> str:
    """Write a config value as Hydra override syntax that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if value and _parses_as(value, value):
            return value
        quoted = _quote(value)
        if not _parses_as(quoted, value):
            raise ConfigError(f"cannot pass the value {value!r} as a Hydra override")
        return quoted
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"unsupported value type {type(value).__name__} for a Hydra override: {value!r}")


def flatten_args(args: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mapping -> (dotted key, value) pairs; a string at a group key selects an option."""
    pairs: list[tuple[str, Any]] = []
    for key, value in args.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs += flatten_args(value, prefix=f"{dotted}.")
        else:
            pairs.append((dotted, value))
    return pairs


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    return []


# --- building the plan ----------------------------------------------------------------------------


def _stage_words(step_name: str, stage: Any) -> tuple[str, ...]:
    from safer_instruct.cli import STAGES

    words = tuple(str(stage).split()) if isinstance(stage, str) else tuple(stage or ())
    known = {s.words for s in STAGES}
    if words not in known:
        names = ", ".join(s.name for s in STAGES)
        raise ConfigError(
            f"experiment step '{step_name}': unknown stage '{' '.join(words)}' (known stages: {names})"
        )
    return words


def fingerprint(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _topological(steps: dict[str, Step], experiment: str) -> dict[str, Step]:
    """Steps ordered so that each comes after what it needs (preset order breaks ties)."""
    ordered: dict[str, Step] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise ConfigError(f"experiment '{experiment}': steps depend on each other in a cycle: {cycle}")
        visiting.append(name)
        for dep in steps[name].deps:
            visit(dep)
        visiting.pop()
        ordered[name] = steps[name]

    for name in steps:
        visit(name)
    return ordered


def _refs(values: Iterable[str]) -> list[str]:
    found: list[str] = []
    for value in values:
        for match in REF.finditer(value):
            if match.group(1) not in found:
                found.append(match.group(1))
    return found


def build_plan(cfg: DictConfig, exp_dir: Path) -> Plan:
    """The steps of `cfg.experiment`, checked, ordered and fingerprinted."""
    experiment = cfg.experiment
    name = str(experiment.name)
    raw_steps = OmegaConf.to_container(experiment.steps, resolve=True)
    if not isinstance(raw_steps, dict) or not raw_steps:
        raise ConfigError(f"experiment '{name}' has no steps (experiment.steps is empty)")
    skip = {str(s) for s in cfg.get("skip") or []}
    unknown_skip = skip - set(raw_steps)
    if unknown_skip:
        raise ConfigError(f"skip: unknown step(s) {', '.join(sorted(unknown_skip))} (steps: {', '.join(raw_steps)})")
    enabled = {k: v for k, v in raw_steps.items() if (v or {}).get("enabled", True) and k not in skip}
    disabled = set(raw_steps) - set(enabled)

    groups: dict[str, list[str]] = {}
    for step_name, spec in enabled.items():
        if (spec or {}).get("group"):
            groups.setdefault(str(spec["group"]), []).append(step_name)
    clash = set(groups) & set(raw_steps)
    if clash:
        raise ConfigError(f"experiment '{name}': group name(s) {', '.join(sorted(clash))} are also step names")
    steps: dict[str, Step] = {}
    for step_name, spec in enabled.items():
        if not STEP_NAME.match(step_name):
            raise ConfigError(f"experiment '{name}': step name '{step_name}' must be a Python identifier")
        unknown = set(spec) - {"stage", "args", "overrides", "outputs", "after", "group", "profile", "resources", "enabled"}
        if unknown:
            raise ConfigError(f"experiment step '{step_name}': unknown key(s) {', '.join(sorted(unknown))}")
        if "stage" not in spec:
            raise ConfigError(f"experiment step '{step_name}': `stage` is required (e.g. stage: train dpo)")
        words = _stage_words(step_name, spec["stage"])
        args: list[tuple[str, Any] | str] = [*flatten_args(spec.get("args") or {})]
        args += [str(o) for o in spec.get("overrides") or []]
        deps = []
        for ref in [*_refs(s for arg in args for s in _strings(arg)), *(str(a) for a in spec.get("after") or [])]:
            if ref in groups:  # a group stands for all of its steps (but not for the step itself)
                deps += [m for m in groups[ref] if m not in deps and m != step_name]
            elif ref not in deps:
                deps.append(ref)
        for dep in deps:
            if dep in disabled:
                raise ConfigError(f"experiment step '{step_name}' needs step '{dep}', which is disabled or skipped")
            if dep not in raw_steps:
                raise ConfigError(
                    f"experiment step '{step_name}' refers to unknown step '{dep}' "
                    f"(steps: {', '.join(raw_steps)}; groups: {', '.join(groups) or 'none'})"
                )
            if dep == step_name:
                raise ConfigError(f"experiment step '{step_name}' refers to its own output dir")
        steps[step_name] = Step(
            name=step_name,
            stage=words,
            args=args,
            outputs=tuple(str(o) for o in spec.get("outputs") or ()),
            deps=tuple(deps),
            profile=str(spec.get("profile") or PROFILE_BY_STAGE.get(words[0], "cpu")),
            resources=dict(spec.get("resources") or {}),
            group=str(spec["group"]) if spec.get("group") else None,
        )

    steps = _topological(steps, name)
    common = _common_overrides(cfg, name)
    fingerprinted = [o for o in common if o.split("=", 1)[0] in FINGERPRINTED_COMMON]
    for step in steps.values():
        step.fingerprint = fingerprint(
            {
                "stage": step.stage,
                "args": [a if isinstance(a, str) else f"{a[0]}={hydra_value(a[1])}" for a in step.args],
                "common": fingerprinted,
                "outputs": step.outputs,
                "group": step.group,
                "deps": {dep: steps[dep].fingerprint for dep in step.deps},
            }
        )
    report_step = experiment.get("report_step")
    if report_step is not None and report_step not in steps:
        raise ConfigError(f"experiment '{name}': report_step '{report_step}' is not an enabled step")
    return Plan(name=name, exp_dir=exp_dir.resolve(), steps=steps, common=common, report_step=report_step)


def _common_overrides(cfg: DictConfig, experiment_name: str) -> list[str]:
    overrides = []
    for key in FORWARDED_COMMON:
        value = OmegaConf.select(cfg, key, default=None)
        if key == "tracking.group" and value is None:
            value = experiment_name  # the stages of one experiment group together in wandb
        if value is not None or key.startswith("tracking."):
            overrides.append(f"{key}={hydra_value(value)}")
    return overrides


# --- checking the commands before anything runs ---------------------------------------------------


def compose_stage(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose a stage config, also from inside a running Hydra app (the `run` stage itself)."""
    from hydra.core.global_hydra import GlobalHydra

    from safer_instruct.config import compose

    if not GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides)
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        text = str(err).strip() or type(err).__name__
        raise ConfigError(" ".join(line.strip() for line in text.splitlines()[:2] if line.strip())) from None


def step_config(plan: Plan, name: str) -> DictConfig:
    """The config a step's stage composes from the step's overrides (what its job will run with)."""
    from safer_instruct.cli import STAGES

    config_names = {s.words: s.config_name for s in STAGES}
    return compose_stage(config_names[plan.steps[name].stage], plan.overrides(name))


def validate(plan: Plan, only: Iterable[str] | None = None) -> None:
    """Compose every step's config with its overrides: a bad key fails now, naming the step."""
    from safer_instruct.config import check_required

    for name in only if only is not None else plan.steps:
        try:
            check_required(step_config(plan, name))
        except ConfigError as err:
            raise ConfigError(f"experiment step '{name}' ({plan.steps[name].stage_name}): {err}") from None
