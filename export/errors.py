"""The error type of the export package: one line saying what is wrong and how to fix it."""

import re


class ExportError(RuntimeError):
    """A user-facing export failure; ``python -m recipes`` prints ``error: <message>`` and exits with status 2."""


def root_reason(err: BaseException, limit: int = 200) -> str:
    """The first line of the innermost cause of ``err`` (exporters wrap the useful message), ANSI colours removed."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:limit]}" if text else type(err).__name__
