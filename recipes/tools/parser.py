"""Argument parsing for the ``python -m recipes`` tools: a usage error is one line, like every other bad input."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from lightning_modules.errors import PocketbertError
from lightning_modules.runs import resolve_run_path


def run_path(value: str) -> Path:
    """A path argument, read through a ``tb_logs/<name>/latest`` pointer when it names one (the ``type=`` of every
    path the tools take, so ``--run tb_logs/news16_distill_cpu/latest`` is the run folder it names)."""
    return resolve_run_path(value)


class ToolParser(argparse.ArgumentParser):
    """``argparse`` whose errors raise :class:`PocketbertError` (printed as ``error: ...``, exit status 2) instead of
    printing the usage block and the message on separate lines."""

    def error(self, message: str) -> NoReturn:
        raise PocketbertError(f"{message}; see {self.prog} --help")
