"""Exceptions that the command-line edge turns into clear one-line messages and a non-zero exit."""
from __future__ import annotations


class AutotransError(Exception):
    """Base class for user-facing errors: the message alone must tell the user what is wrong."""


class ConfigurationError(AutotransError):
    """Environment, arguments or files that configure a run are missing or invalid."""


class DatasetError(AutotransError):
    """A dataset cannot be used as given. ``problems`` holds one ``(case, message)`` per finding.

    ``summary``: the line the command-line edge prints above the problems; the default says that nothing was
    written (true for up-front checks). Runs that wrote some cases before others failed say which instead.
    """

    def __init__(self, problems: list[tuple[str, str]], header: str = "dataset problems",
                 summary: str | None = None) -> None:
        self.problems = list(problems)
        self.summary = summary or f"{len(self.problems)} problem(s) found, nothing was written:"
        lines = [f"{case}: {msg}" for case, msg in self.problems]
        super().__init__(f"{header} ({len(lines)}):\n" + "\n".join(lines))


class NotBuiltError(AutotransError):
    """A declared feature whose implementation has not landed yet."""
