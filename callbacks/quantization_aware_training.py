"""Quantization-aware training: int8 fake quantization of weights and activations for the last epochs of a fit."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from export import ExportError
from export.qat import RangeObserver, disable_fake_quant, enable_fake_quant


class QuantizationAwareTraining(Callback):
    """From epoch ``start_epoch`` on, the classifier (``pl_module.model``) trains and validates with int8 fake
    quantization (see ``export/qat.py``): int8 per-channel weights and uint8 per-tensor inputs of every
    ``nn.Linear`` (running min/max ranges), int8 embedding tables. The model learns around the rounding that
    ``callbacks.StaticInt8Export`` then applies for real (ONNX Runtime static INT8, Core ML W8A8). Checkpoints hold
    the plain weights; validation runs quantized, so the best checkpoint is the best quantized model once QAT
    started. Fake quantization is removed when training ends, before the fit-end exports.

    Args:
        start_epoch: First epoch (0-based) trained with fake quantization; 0 for a fine-tune of a trained model.
        momentum: Weight of the old range in each batch's moving min/max of the activations.
        embedding_tables: Also fake-quantize the embedding tables (ONNX static INT8 stores them as int8).
    """

    def __init__(self, start_epoch: int = 0, momentum: float = 0.9, embedding_tables: bool = True) -> None:
        if start_epoch < 0:
            raise ExportError(f"QuantizationAwareTraining start_epoch must be >= 0, got {start_epoch}")
        if not 0.0 <= momentum < 1.0:
            raise ExportError(f"QuantizationAwareTraining momentum must be in [0, 1), got {momentum}")
        self.start_epoch, self.momentum, self.embedding_tables = start_epoch, momentum, embedding_tables
        self.observers: dict[str, RangeObserver] = {}
        self.active = False

    def _model(self, pl_module: L.LightningModule) -> torch.nn.Module:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"QuantizationAwareTraining needs {type(pl_module).__name__}.model (the pocketbert "
                              "checkpoint contract)")
        return model

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active or trainer.current_epoch < self.start_epoch:
            return
        self.observers = enable_fake_quant(self._model(pl_module), self.momentum, self.embedding_tables,
                                           self.observers)
        self.active = True
        rank_zero_info(f"quantization-aware training from epoch {trainer.current_epoch}: int8 fake quantization of "
                       f"{len(self.observers)} linear layers' weights and inputs"
                       f"{' and the embedding tables' if self.embedding_tables else ''}")

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:  # plain maths for the fit-end test and exports (they quantize for real)
            disable_fake_quant(self._model(pl_module))
            self.active = False
