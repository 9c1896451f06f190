"""Exceptions that the command-line edge turns into clear one-line messages and a non-zero exit."""
from __future__ import annotations


class AutotransError(Exception):
    """Base class for user-facing errors: the message alone must tell the user what is wrong."""


class ConfigurationError(AutotransError):
    """Environment, arguments or files that configure a run are missing or invalid."""


class DatasetError(AutotransError):
    """A dataset cannot be used as given. ``problems`` holds one ``(case, message)`` per finding."""

    def __init__(self, problems: list[tuple[str, str]], header: str = "dataset problems") -> None:
        self.problems = list(problems)
        lines = [f"{case}: {msg}" for case, msg in self.problems]
        super().__init__(f"{header} ({len(lines)}):\n" + "\n".join(lines))


class NotBuiltError(AutotransError):
    """A declared feature whose implementation has not landed yet."""
