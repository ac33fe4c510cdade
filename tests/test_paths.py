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
