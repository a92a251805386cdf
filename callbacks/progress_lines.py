"""Progress as plain lines for logs: what a progress bar shows, when output goes to a file instead of a terminal."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from export import ExportError


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class ProgressLines(Callback):
    """During ``fit``, print a line at most every ``interval_s`` seconds (epoch, step/total, loss, elapsed, ETA) and
    one after each validation (its metrics). ``python -m recipes`` adds it in place of the progress bar when stdout
    is not a terminal (a bar redrawn in a file shows nothing until the run ends).

    Args:
        interval_s: Seconds between progress lines while training.
    """

    def __init__(self, interval_s: float = 30.0) -> None:
        if interval_s <= 0:
            raise ExportError(f"ProgressLines interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self._start = 0.0
        self._last = 0.0

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self.emit(trainer, self.line(trainer, now))

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()
                   if key.startswith("val_") and "/" not in key}
        shown = "  ".join(f"{key} {value:.4f}" for key, value in sorted(metrics.items()))
        self._last = time.monotonic()  # the validation line counts as the progress line of this interval
        self.emit(trainer, f"{self.line(trainer, self._last)}  validated: {shown}")

    @staticmethod
    def emit(trainer: L.Trainer, line: str) -> None:
        # stdout, where the progress bar would have drawn (Lightning's log lines go to stderr), flushed at once
        if trainer.is_global_zero:
            print(line, flush=True)

    def line(self, trainer: L.Trainer, now: float) -> str:
        """``epoch E/N  step S/T (P%)  loss L  elapsed H:MM:SS  ETA H:MM:SS``."""
        total = trainer.estimated_stepping_batches
        step, elapsed = trainer.global_step, now - self._start
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{epochs}"]
        if math.isfinite(total) and total > 0:
            parts.append(f"step {step}/{int(total)} ({100 * step / total:.0f}%)")
        else:
            parts.append(f"step {step}")
        loss = next((value for key, value in trainer.progress_bar_metrics.items() if key.endswith("loss")), None)
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"elapsed {_clock(elapsed)}")
        if step and math.isfinite(total) and total > step:
            parts.append(f"ETA {_clock(elapsed / step * (total - step))}")
        return "  ".join(parts)
