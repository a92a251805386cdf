"""The terminal progress bar without Lightning's ``v_num`` (the logger's version number, not a metric)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override


class TerminalProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar showing only the metrics a module logs with ``prog_bar=True`` (no ``v_num``).

    ``python -m recipes`` uses it when stdout is a terminal; the run dir, version included, is printed at the end.

    Args:
        refresh_rate: Update the bar every this many batches.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
