"""`safer-instruct STAGE [hydra overrides...]`: one command line for every stage.

The CLI only picks the stage (from the table in `safer_instruct.stages`), checks the overrides against
the stage's Hydra config, or against the saved config that `--config-path DIR --config-name NAME`
points at (so a typo fails in a second, before torch is imported or a model is loaded), and then runs
the stage's entry script (`train/*.py`, `eval/*.py`) in this process, exactly as `python train/sft.py
...` or `accelerate launch train/sft.py ...` would.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

from safer_instruct.errors import ConfigError, SaferInstructError
from safer_instruct.paths import PROJECT_ROOT
from safer_instruct.stages import STAGES, Stage, config_file_of

# Flags that Hydra itself understands; they go to the entry script untouched.
HYDRA_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                          "--experimental-rerun", "--cfg", "-c", "--package", "-p", "--info", "-i"}  # fmt: skip
HELP_LIKE = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--shell-completion", "-sc"}


def usage() -> str:
    width = max(len(stage.name) for stage in STAGES)
    lines = [
        "usage: safer-instruct STAGE [key=value ...] [-m key=a,b ...]",
        "",
        "Stages (each reads conf/<stage>.yaml; `safer-instruct STAGE --help` shows its options):",
    ]
    lines += [f"  {stage.name.ljust(width)}  {stage.help}" for stage in STAGES]
    lines += [
        "",
        "Overrides are Hydra's: model=smollm2-135m train.max_steps=10 out_dir=outputs/x.",
        "-m / --multirun sweeps comma-separated values (train.beta=0.05,0.1,0.5).",
    ]
    return "\n".join(lines)


def find_stage(argv: Sequence[str]) -> tuple[Stage, list[str]]:
    """Match the longest run of leading words to a stage; the rest are overrides and flags."""
    words = []
    for arg in argv:
        if arg.startswith("-") or "=" in arg:
            break
        words.append(arg)
    for stage in sorted(STAGES, key=lambda s: -len(s.words)):
        if tuple(words[: len(stage.words)]) == stage.words:
            return stage, list(argv[len(stage.words) :])
    prefix = tuple(words[:1])
    children = sorted(s.words[1] for s in STAGES if s.words[:1] == prefix and len(s.words) > 1)
    if children and len(words) <= 1:
        raise UsageError(f"'{words[0]}' needs a sub-stage: {', '.join(children)}")
    name = " ".join(words) or (argv[0] if argv else "")
    known = ", ".join(stage.name for stage in STAGES)
    raise UsageError(f"unknown stage '{name}' (known stages: {known})")


class UsageError(SaferInstructError):
    pass


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra flags (kept as given) from key=value overrides."""
    flags, overrides = [], []
    expect_value = False
    for arg in args:
        if expect_value:
            flags.append(arg)
            expect_value = False
        elif arg.startswith("-"):
            flags.append(arg)
            expect_value = arg in HYDRA_FLAGS_WITH_VALUE and arg not in {"--cfg", "-c", "--info", "-i"}
        elif "=" in arg or arg.startswith(("+", "~")):
            overrides.append(arg)
        else:
            raise UsageError(f"unexpected argument '{arg}': overrides look like key=value")
    return flags, overrides


def validate(stage: Stage, flags: Sequence[str], overrides: Sequence[str]) -> None:
    """Compose the stage's config as its entry script will, failing with a one-line ConfigError."""
    from safer_instruct.config import check_required, validate_overrides

    config_file = config_file_of(flags)
    if config_file is not None:  # a saved config (a step of `safer-instruct run`)
        from safer_instruct.stages import load_config_file

        check_required(load_config_file(config_file, overrides))
        return
    multirun = bool({"-m", "--multirun"}.intersection(flags))
    validate_overrides(stage.config_name, overrides, multirun=multirun)


def run_stage(stage: Stage, args: Sequence[str]) -> None:
    """Run a stage's entry script in this process, with `args` as its command line."""
    script = PROJECT_ROOT / stage.script
    saved_argv = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved_argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    if argv[0] == "--version":
        from safer_instruct import __version__

        print(f"safer-instruct {__version__}")
        return 0
    try:
        stage, rest = find_stage(argv)
        flags, overrides = split_overrides(rest)
        if not HELP_LIKE.intersection(flags):
            validate(stage, flags, overrides)
        run_stage(stage, rest)
    except SaferInstructError as err:
        print(f"safer-instruct: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, (UsageError, ConfigError)) else 1
    except KeyboardInterrupt:
        print("safer-instruct: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
