"""The stages: every command `safer-instruct STAGE` runs, with its config and its entry script.

A stage is one command of the CLI (`train dpo`, `eval harmlessness`); the experiment runner
(`safer_instruct.pipeline`) runs a stage per step of its graph. Both read this table; the library
never imports the CLI.

A stage reads its config one of two ways, both Hydra's own:
* composed from `conf/<config_name>.yaml` and `key=value` overrides (`safer-instruct train dpo model=tiny`);
* from a saved, resolved config file: `--config-path DIR --config-name config` (what `safer-instruct run`
  gives each step: `<step dir>/config.yaml`), plus Hydra's output dir `hydra.run.dir=${out_dir}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from safer_instruct.errors import ConfigError

CONFIG_FILE = "config.yaml"
# Hydra writes its run files (.hydra/, the log) into the stage's out_dir, as `conf/common.yaml` asks;
# a saved config carries no `hydra:` node, so a stage reading one is told so on its command line.
RUN_DIR_OVERRIDE = "hydra.run.dir=${out_dir}"


@dataclass(frozen=True)
class Stage:
    """One runnable stage: the words that name it, its config, its entry script."""

    words: tuple[str, ...]
    config_name: str
    script: str
    help: str

    @property
    def name(self) -> str:
        return " ".join(self.words)


# Only stages that are built are listed here: the CLI never offers a placeholder.
STAGES: tuple[Stage, ...] = (
    Stage(("construct",), "construct", "safer_instruct/construct/main.py", "Safer-Instruct preference data from a corpus of undesired texts (phases=[...]: a subset)"),
    Stage(("train", "reverse"), "train_reverse", "train/reverse.py", "reversed instruction tuning: learn to write the instruction a response answers"),
    Stage(("train", "sft"), "train_sft", "train/sft.py", "supervised fine-tuning on instructions or chosen responses"),
    Stage(("train", "dpo"), "train_dpo", "train/dpo.py", "DPO from the SFT model, reference log-probs computed once and reused"),
    Stage(("eval", "harmlessness"), "eval_harmlessness", "eval/harmlessness.py", "harmlessness rate of answers to harmful prompts, by an LLM judge"),
    Stage(("eval", "downstream"), "eval_downstream", "eval/downstream.py", "downstream ability with lm-evaluation-harness"),
    Stage(("report",), "report", "eval/report.py", "comparison table, charts and DPO curves from finished runs"),
    Stage(("run",), "run", "safer_instruct/pipeline/main.py", "every step of an experiment, locally or as Slurm jobs (experiment=demo|smoke|paper_*)"),
)  # fmt: skip


def stage_named(words: Sequence[str] | str) -> Stage:
    """The stage whose words these are (`"train dpo"` or `("train", "dpo")`); a ConfigError names the known ones."""
    key = tuple(words.split()) if isinstance(words, str) else tuple(words)
    for stage in STAGES:
        if stage.words == key:
            return stage
    raise ConfigError(f"unknown stage '{' '.join(key)}' (known stages: {', '.join(s.name for s in STAGES)})")


def config_file_args(config_file: Path) -> list[str]:
    """The command-line arguments that make a stage read `config_file` (a saved, resolved config)."""
    config_file = Path(config_file).resolve()
    return [f"--config-path={config_file.parent}", f"--config-name={config_file.stem}", RUN_DIR_OVERRIDE]


def config_file_of(flags: Sequence[str]) -> Path | None:
    """The saved config a stage's Hydra flags point at (`--config-path D --config-name N`), or None."""
    values: dict[str, str] = {}
    items = list(flags)
    for index, flag in enumerate(items):
        name, eq, value = flag.partition("=")
        if name in {"--config-path", "-cp", "--config-name", "-cn"}:
            value = value if eq else (items[index + 1] if index + 1 < len(items) else "")
            values["path" if name in {"--config-path", "-cp"} else "name"] = value
    if "path" not in values:
        return None
    return Path(values["path"]) / f"{values.get('name') or 'config'}.yaml"


def load_config_file(config_file: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """A saved config with `key=value` overrides on top, composed as Hydra composes it for the stage."""
    from safer_instruct.config import compose

    config_file = Path(config_file).resolve()
    if not config_file.is_file():
        raise ConfigError(f"config file {config_file} not found (written by `safer-instruct run` for each step)")
    own = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    try:
        cfg = compose(config_file.stem, own, config_dir=config_file.parent)
    except ConfigError as err:
        raise ConfigError(f"{config_file}: {err}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg
