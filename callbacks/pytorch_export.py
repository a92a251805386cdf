"""Fit-end PyTorch artifacts: the fp32 classifier and its dynamic INT8 twin."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from callbacks.context import export_context
from export import ExportContext, write_pytorch


class PyTorchExport(Callback):
    """At fit end, write the best checkpoint's classifier into ``<log_dir>/export/``.

    Files: ``pytorch/`` (fp32, ``from_pretrained`` layout) and ``model.int8.pt`` (``nn.Linear`` layers dynamically
    quantized to int8, TorchScript), each checked against PyTorch fp32 on the test set and recorded in
    ``manifest.json``.

    Args:
        int8: Also write the dynamic INT8 model.
    """

    def __init__(self, int8: bool = True) -> None:
        self.int8 = int8

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            self.export(export_context(trainer, pl_module))

    def export(self, context: ExportContext) -> None:
        write_pytorch(context, int8=self.int8)
