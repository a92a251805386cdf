"""Test-only classes that recipes written by tests can name by class path."""

from __future__ import annotations

import os
import signal

import lightning as L
from typing_extensions import override


class KillAtStep(L.Callback):
    """SIGKILLs its own process after ``step`` optimizer steps: a crash with no chance to clean up.

    Args:
        step: Global step after which the process dies.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_end(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
