"""From an experiment preset to an ordered list of steps, each one stage with its own resolved config.

An experiment preset (`conf/experiment/NAME.yaml`) lists its steps under `experiment.steps`:

    dpo:
      stage: train dpo                      # the stage it runs: words of safer_instruct.stages.STAGES
      args:                                 # the step's settings over the stage's config (nested keys)
        model: tiny                         #   a string at a config group selects an option: model=tiny
        model.path: "@{sft}/model"          #   @{step} is that step's output dir: a dependency
        train: {max_steps: 2}               #   a value: train.max_steps=2 (the preset decides the rest)
        llm@expert: inprocess               #   a defaults-list choice with a package: llm@expert=inprocess
      overrides: []                         # Hydra override strings, applied last (optional)
      outputs: [model/config.json]          # files the stage must leave in its out_dir
      after: []                             # extra dependencies without a @{ref} (optional)
      group: null                           # out_dir <experiment dir>/<group>/<step>; `@{group}` is
                                            #   that folder and depends on all its steps (a report
                                            #   row per group: one model's evaluations together)
      profile: train                        # Slurm resource profile (default: by stage)
      resources: {}                         # per-step Slurm resources over the profile's
      enabled: true

A run sets a step's settings over the experiment's with `step_args` (`+step_args.dpo.train.beta=0.05`,
sweepable with -m): the step's args, then these. Every step gets its own out_dir `<experiment dir>/[<group>/]<step>`. The dependency graph is read from the
`@{step}` references, so it always matches the data flow. The plan composes each step's config once
(the stage's config, the option choices, then the values, as Hydra would from overrides) and the step's
process reads it from `<step dir>/config.yaml`. A step's fingerprint hashes that resolved config (with the
experiment dir written symbolically) and the fingerprints of the steps it needs: a change anywhere
upstream, in a preset or in the experiment changes it, a change of output location does not (sweep points
share steps).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safer_instruct.errors import ConfigError
from safer_instruct.identity import digest
from safer_instruct.stages import CONFIG_FILE, config_file_args, stage_named

REF = re.compile(r"@\{([A-Za-z_][A-Za-z0-9_]*)\}")
STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Resource profile of a step when the preset names none, by the first word of its stage.
PROFILE_BY_STAGE = {"train": "train", "construct": "generate", "eval": "eval", "report": "cpu"}
# Keys of conf/common.yaml that the run passes on to every step, so one experiment shares them.
FORWARDED_COMMON = ("seed", "cache.dir", "tracking.mode", "tracking.project", "tracking.entity", "tracking.group")
# Top-level keys of a step's config that say where results are cached or logged, not what is computed:
# left out of its fingerprint (so sweep points and `reuse=` share steps across cache dirs and wandb groups).
UNFINGERPRINTED = ("cache", "tracking")
EXPERIMENT_DIR = "@{experiment}"  # the experiment dir, written symbolically in fingerprints


@dataclass
class Step:
    name: str
    stage: tuple[str, ...]
    # The step's `args` as (dotted key, value) pairs, and its raw `overrides`, `@{step}` unreplaced
    args: list[tuple[str, Any]]
    outputs: tuple[str, ...]
    deps: tuple[str, ...]
    profile: str
    overrides: list[str] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    fingerprint: str = ""

    @property
    def stage_name(self) -> str:
        return " ".join(self.stage)

    @property
    def config_name(self) -> str:
        """The stage's Hydra config (`conf/<config_name>.yaml`) the step's config starts from."""
        return stage_named(self.stage).config_name


@dataclass
class Plan:
    """An experiment's steps in dependency order, where each one writes, and its resolved config."""

    name: str
    exp_dir: Path
    steps: dict[str, Step]
    common: dict[str, Any]  # forwarded settings (seed, cache.dir, tracking.*)
    report_step: str | None = None
    configs: dict[str, DictConfig] = field(default_factory=dict)

    def step_dir(self, name: str) -> Path:
        group = self.steps[name].group if name in self.steps else None
        return self.exp_dir / group / name if group else self.exp_dir / name

    def ref_dir(self, name: str) -> Path:
        """The folder `@{name}` stands for: a step's out_dir, or a group's folder."""
        return self.step_dir(name) if name in self.steps else self.exp_dir / name

    def config_path(self, name: str) -> Path:
        """Where the step's resolved config is saved, and read by the step's process."""
        return self.step_dir(name) / CONFIG_FILE

    def resolve(self, value: Any) -> Any:
        """Replace `@{step}` / `@{group}` references (in strings, lists, mappings) by their folder."""
        return map_strings(value, lambda text: REF.sub(lambda m: str(self.ref_dir(m.group(1))), text))

    def settings(self, name: str) -> list[tuple[str, Any]]:
        """The step's own settings, references resolved: forwarded ones, its args, its out_dir."""
        own = [(key, self.resolve(value)) for key, value in self.steps[name].args]
        return [*self.common.items(), *own, ("out_dir", str(self.step_dir(name)))]

    def overrides(self, name: str) -> list[str]:
        """The step's settings written as Hydra overrides: what the job scripts show, and what
        composes the same config by hand (`compose("train_dpo", plan.overrides("dpo"))`)."""
        step = self.steps[name]
        raw = [str(self.resolve(o)) for o in step.overrides]
        settings = [f"{key}={hydra_value(value)}" for key, value in self.settings(name)]
        return [*settings[:-1], *raw, settings[-1]]

    def command(self, name: str) -> list[str]:
        """`safer-instruct` arguments of a step: its stage, reading the step's saved config."""
        return [*self.steps[name].stage, *config_file_args(self.config_path(name))]

    def edges(self) -> list[tuple[str, str]]:
        """(upstream, downstream) pairs in plan order."""
        return [(dep, step.name) for step in self.steps.values() for dep in step.deps]


# --- Hydra override syntax (what a step's settings look like on a command line) --------------------


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


def map_strings(value: Any, change: Callable[[str], Any]) -> Any:
    """`value` with every string in it (in lists and mappings too) replaced by `change(string)`."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, (list, tuple)):
        return [map_strings(v, change) for v in value]
    if isinstance(value, Mapping):
        return {k: map_strings(v, change) for k, v in value.items()}
    return value


# --- building the plan ----------------------------------------------------------------------------


def _stage_words(step_name: str, stage: Any) -> tuple[str, ...]:
    words = tuple(str(stage).split()) if isinstance(stage, str) else tuple(stage or ())
    try:
        return stage_named(words).words
    except ConfigError as err:
        raise ConfigError(f"experiment step '{step_name}': {err}") from None


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


def _refs(value: Any) -> list[str]:
    """The names of the `@{name}` references in a value's strings, each once, in order of appearance."""
    found: list[str] = []
    map_strings(value, lambda text: found.extend(REF.findall(text)))
    return list(dict.fromkeys(found))


def build_plan(cfg: DictConfig, exp_dir: Path) -> Plan:
    """The steps of `cfg.experiment`, checked, ordered, each with its resolved config and fingerprint."""
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
    step_args = OmegaConf.to_container(cfg.get("step_args") or OmegaConf.create({}), resolve=True)
    unknown_args = set(step_args) - set(raw_steps)
    if unknown_args:
        raise ConfigError(f"step_args: unknown step(s) {', '.join(sorted(unknown_args))} (steps: {', '.join(raw_steps)})")
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
        args = [*flatten_args(spec.get("args") or {}), *flatten_args(step_args.get(step_name) or {})]
        raw = [str(o) for o in spec.get("overrides") or []]
        deps = []
        for ref in [*_refs([[value for _, value in args], raw]), *(str(a) for a in spec.get("after") or [])]:
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
            overrides=raw,
            outputs=tuple(str(o) for o in spec.get("outputs") or ()),
            deps=tuple(deps),
            profile=str(spec.get("profile") or PROFILE_BY_STAGE.get(words[0], "cpu")),
            resources=dict(spec.get("resources") or {}),
            group=str(spec["group"]) if spec.get("group") else None,
        )

    report_step = experiment.get("report_step")
    if report_step is not None and report_step not in steps:
        raise ConfigError(f"experiment '{name}': report_step '{report_step}' is not an enabled step")
    plan = Plan(name=name, exp_dir=exp_dir.resolve(), steps=_topological(steps, name),
                common=_common_settings(cfg, name), report_step=report_step)  # fmt: skip
    for step in plan.steps.values():
        try:
            plan.configs[step.name] = compose_step(plan, step.name)
        except ConfigError as err:
            raise ConfigError(f"experiment step '{step.name}' ({step.stage_name}): {err}") from None
        step.fingerprint = digest(
            {
                "stage": step.stage,
                # the experiment dir written as @{experiment}: the same step anywhere, the same fingerprint
                "config": map_strings(fingerprinted_config(plan.configs[step.name]),
                                      lambda text: text.replace(str(plan.exp_dir), EXPERIMENT_DIR)),
                "outputs": step.outputs,
                "group": step.group,
                "deps": {dep: plan.steps[dep].fingerprint for dep in step.deps},
            },
            length=16,
        )
    return plan


def _common_settings(cfg: DictConfig, experiment_name: str) -> dict[str, Any]:
    settings = {}
    for key in FORWARDED_COMMON:
        value = OmegaConf.select(cfg, key, default=None)
        if key == "tracking.group" and value is None:
            value = experiment_name  # the steps of one experiment group together in wandb
        if value is not None or key.startswith("tracking."):
            settings[key] = value
    return settings


def fingerprinted_config(cfg: DictConfig) -> dict[str, Any]:
    """The part of a step's resolved config that decides what it computes (no cache or tracking place)."""
    from safer_instruct.config import to_plain

    return {k: v for k, v in to_plain(cfg).items() if k not in UNFINGERPRINTED}


# --- each step's config ---------------------------------------------------------------------------


def compose_step(plan: Plan, name: str) -> DictConfig:
    """A step's config: its stage's config as Hydra composes it from the step's overrides (`plan.overrides(name)`:
    the forwarded settings and step args, the step's raw `overrides`, out_dir last), checked as the command line
    checks its overrides (no `???` left, no text where a number or a boolean belongs)."""
    from safer_instruct.config import validate_overrides

    return validate_overrides(plan.steps[name].config_name, plan.overrides(name))


def step_config(plan: Plan, name: str) -> DictConfig:
    """The config a step's stage runs with (what `<step dir>/config.yaml` holds, resolved)."""
    return plan.configs[name]


def config_text(plan: Plan, name: str) -> str:
    """The step's saved config: resolved, as the stage itself saves it. A secret is refused, never
    written: the file is what the step's job reads, so secrets reach it through `*_env` variables."""
    from safer_instruct.config import to_plain

    cfg = plan.configs[name]
    plain, clear = to_plain(cfg), to_plain(cfg, redacted=False)
    if plain != clear:
        redacted = dict(flatten_args(plain))
        keys = [key for key, value in flatten_args(clear) if redacted.get(key) != value]
        raise ConfigError(
            f"experiment step '{name}': the config holds a secret at {', '.join(keys) or 'some key'}; "
            "give it through the environment variable its `*_env` key names instead"
        )
    return OmegaConf.to_yaml(OmegaConf.create(plain))


def write_config(plan: Plan, name: str) -> Path:
    """Save the step's config in its dir, where its process reads it."""
    from safer_instruct.io import atomic_write_text

    path = plan.config_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, config_text(plan, name))
    return path


def validate(plan: Plan) -> None:
    """Every step's config composed (at planning) and complete: a bad key fails now, naming the step."""
    for name in plan.steps:
        config_text(plan, name)
