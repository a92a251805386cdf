"""Structured pruning before training: remove attention heads and FFN neurons, then fine-tune the smaller model."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from export import ExportError
from export.pruning import prune_structure


class StructuredPruning(Callback):
    """Before the optimizer is built, remove the ``fraction`` of attention heads and FFN neurons with the smallest
    weight norms from the classifier (``pl_module.model``, an ``ngram_bert`` student), then train the smaller model.

    Heads are ranked over all layers (each layer keeps at least one); neurons in each layer. Q/K/V, the attention
    output and both FFN matrices shrink, so every runtime computes less (ONNX and PyTorch latency drop, unlike
    unstructured pruning). The kept sizes go into the model config (``layer_heads``, ``layer_intermediate_sizes``),
    which the checkpoint and every export carry. Start from trained weights (``model.init_args.pretrained`` pointing
    at a trained student's ``export/pytorch``): the norms of a fresh model rank nothing. A resumed run prunes the
    same starting weights again, so the shapes match its checkpoint.

    Args:
        fraction: Share of heads and of FFN neurons removed, e.g. 0.3 or 0.5.
        heads: Prune attention heads.
        neurons: Prune FFN neurons.
    """

    def __init__(self, fraction: float = 0.3, heads: bool = True, neurons: bool = True) -> None:
        if not 0.0 < fraction < 1.0:
            raise ExportError(f"StructuredPruning fraction must be in (0, 1), got {fraction}")
        if not heads and not neurons:
            raise ExportError("StructuredPruning needs heads, neurons or both set to true")
        self.fraction, self.heads, self.neurons = fraction, heads, neurons
        self.report: dict[str, Any] | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning calls callbacks' setup before configure_optimizers: the optimizer sees the smaller matrices
        if stage != "fit" or self.report is not None:
            return
        model = getattr(pl_module, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"StructuredPruning needs {type(pl_module).__name__}.model (the pocketbert checkpoint "
                              "contract)")
        self.report = prune_structure(model, self.fraction, heads=self.heads, neurons=self.neurons)
        rank_zero_info(f"structured pruning {self.fraction:.0%}: heads per layer {self.report['layer_heads']}, FFN "
                       f"neurons per layer {self.report['layer_intermediate_sizes']}; parameters "
                       f"{self.report['parameters_before']:,} -> {self.report['parameters_after']:,}")
