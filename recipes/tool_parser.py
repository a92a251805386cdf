"""Argument parsing for the ``python -m recipes`` tools: a usage error is one line, like every other bad input."""

from __future__ import annotations

import argparse
from typing import NoReturn

from lightning_modules.errors import PocketbertError


class ToolParser(argparse.ArgumentParser):
    """``argparse`` whose errors raise :class:`PocketbertError` (printed as ``error: ...``, exit status 2) instead of
    printing the usage block and the message on separate lines."""

    def error(self, message: str) -> NoReturn:
        raise PocketbertError(f"{message}; see {self.prog} --help")
