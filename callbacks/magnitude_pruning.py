"""Unstructured magnitude pruning while the model trains (one-shot or on a gradual schedule)."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from export import ExportError
from export.pruning import Scope, apply_masks, cubic_sparsity, magnitude_masks, prunable_weights, sparsity_report


class MagnitudePruning(Callback):
    """Zero the smallest-magnitude weights of the classifier (``pl_module.model``) during training and keep them zero.

    Prunable: every encoder ``nn.Linear``, the pooler, the n-gram projection and (``include_embeddings``) the token
    and n-gram tables; never the classifier, position/type embeddings, LayerNorm or biases. ``one_shot`` prunes to
    ``sparsity`` before the first step and fine-tunes what is left; ``gradual`` raises the sparsity from 0 along
    Zhu & Gupta's cubic curve, every ``interval_steps`` steps, reaching ``sparsity`` after ``ramp_epochs`` epochs. The
    ramp ends by the first validation (``ramp_epochs`` at most 1), so every checkpoint (the best one exports) holds
    the full sparsity. Pruned weights are re-zeroed after every optimizer step. Dense runtimes (ONNX, PyTorch) do
    not get faster; ``CoreMLExport(sparse_weights=true)`` stores the zeros sparsely, so the app gets the size gain.

    Args:
        sparsity: Share of the prunable weights set to zero, e.g. 0.3 or 0.5.
        scope: ``global`` (one magnitude threshold over all prunable matrices) or ``layer`` (the same share in each).
        schedule: ``one_shot`` or ``gradual``.
        ramp_epochs: Epochs (at most 1) over which a gradual schedule reaches ``sparsity``.
        interval_steps: Optimizer steps between two gradual pruning steps.
        include_embeddings: Also prune the token and n-gram embedding tables (most of the student's weights).
    """

    def __init__(self, sparsity: float = 0.5, scope: Scope = "global",
                 schedule: Literal["one_shot", "gradual"] = "gradual", ramp_epochs: float = 1.0,
                 interval_steps: int = 20, include_embeddings: bool = True) -> None:
        if not 0.0 < sparsity < 1.0:
            raise ExportError(f"MagnitudePruning sparsity must be in (0, 1), got {sparsity}")
        if not 0.0 < ramp_epochs <= 1.0:
            raise ExportError(f"MagnitudePruning ramp_epochs must be in (0, 1] (the ramp ends by the first validation, "
                              f"so every checkpoint is fully pruned), got {ramp_epochs}")
        if interval_steps < 1:
            raise ExportError(f"MagnitudePruning interval_steps must be positive, got {interval_steps}")
        self.sparsity, self.scope, self.schedule = sparsity, scope, schedule
        self.ramp_epochs, self.interval_steps, self.include_embeddings = ramp_epochs, interval_steps, include_embeddings
        self._masks: dict[str, torch.Tensor] = {}
        self._ramp_steps = 1
        self._current = 0.0

    def _weights(self, pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"MagnitudePruning needs {type(pl_module).__name__}.model (the pocketbert checkpoint "
                              "contract)")
        return prunable_weights(model, self.include_embeddings)

    def _prune_to(self, pl_module: L.LightningModule, sparsity: float) -> None:
        weights = self._weights(pl_module)
        self._masks = magnitude_masks(weights, sparsity, self.scope)
        apply_masks(weights, self._masks)
        self._current = sparsity

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches if math.isfinite(trainer.num_training_batches) else 1
        self._ramp_steps = max(1, math.floor(self.ramp_epochs * batches / trainer.accumulate_grad_batches))
        # 0 at a fresh start of a gradual ramp; a resumed run continues where its ramp was
        start = (self.sparsity if self.schedule == "one_shot"
                 else cubic_sparsity(trainer.global_step, self._ramp_steps, self.sparsity))
        self._prune_to(pl_module, start)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.schedule == "gradual" and self._current < self.sparsity and (
                step % self.interval_steps == 0 or step >= self._ramp_steps):
            apply_masks(self._weights(pl_module), self._masks)  # pruned weights first back to zero: masks only grow
            self._prune_to(pl_module, cubic_sparsity(step, self._ramp_steps, self.sparsity))
        else:
            apply_masks(self._weights(pl_module), self._masks)  # the optimizer step moved pruned weights off zero
        pl_module.log("pruning/sparsity", self._current, on_step=True, on_epoch=False)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model: Any = pl_module.model
        report = sparsity_report(model, self.include_embeddings)
        rank_zero_info(f"magnitude pruning ({self.scope}, {self.schedule}): {report['prunable_sparsity']:.1%} of the "
                       f"prunable weights and {report['model_sparsity']:.1%} of all are zero")
