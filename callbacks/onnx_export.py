"""Fit-end ONNX artifacts (fp32 and ONNX Runtime INT8), with a pre-flight trial export at fit start."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from callbacks.context import export_context
from export import ExportContext, ExportError, preflight, write_onnx

OPSETS = range(18, 24)


class OnnxExport(Callback):
    """At fit end, write ``model.onnx`` (dynamic batch and sequence axes) and ``model.int8.onnx`` into
    ``<log_dir>/export/``; parity with PyTorch on the real test set is recorded in ``manifest.json``.

    Args:
        opset: ONNX opset of the export (18 to 23).
        int8: Also write the ONNX Runtime dynamic INT8 model.
        min_agreement: Fail when fp32 ONNX predictions agree with PyTorch on less than this share of the test set.
        preflight: At fit start, trial-export the untrained model so an unsupported op fails in seconds.
    """

    def __init__(self, opset: int = 18, int8: bool = True, min_agreement: float = 0.999,
                 preflight: bool = True) -> None:
        if opset not in OPSETS:
            raise ExportError(f"OnnxExport opset must be between {OPSETS[0]} and {OPSETS[-1]}, got {opset}")
        if not 0.0 <= min_agreement <= 1.0:
            raise ExportError(f"OnnxExport min_agreement is a share of the test set in [0, 1], got {min_agreement}")
        self.opset = opset
        self.int8 = int8
        self.min_agreement = min_agreement
        self.preflight = preflight

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.preflight and trainer.is_global_zero:
            start, max_length = time.perf_counter(), int(pl_module.hparams.get("max_length", 128))
            preflight(getattr(pl_module, "model", pl_module), max_length, "onnx")
            rank_zero_info(f"pre-flight: the untrained model exports to ONNX ({time.perf_counter() - start:.1f} s)")

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            self.export(export_context(trainer, pl_module))

    def export(self, context: ExportContext) -> None:
        write_onnx(context, opset=self.opset, int8=self.int8, min_agreement=self.min_agreement)
