"""Errors that reach the user as one readable line (the CLI prints them without a traceback)."""

from __future__ import annotations


class SaferInstructError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ConfigError(SaferInstructError):
    """A configuration value is missing, unknown or inconsistent."""


class ModelNotFoundError(SaferInstructError):
    """A model reference could not be resolved to weights on this machine."""


class DataError(SaferInstructError):
    """A row of an input file is malformed. Names the file, the row and the field."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None, field: str | None = None):
        self.path, self.row, self.field = path, row, field
        where = ", ".join(
            part
            for part in (
                f"file {path}" if path else "",
                f"row {row}" if row is not None else "",
                f"field '{field}'" if field else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
