"""What every classifier LightningModule shares: argument checks, the optimizer, the evaluation steps' metrics and
the export record a checkpoint carries. Functions and one metrics object per stage, no base class: ``TextClassifier``
and ``DistillationModule`` call them from their hooks, and ``Classifier`` names what they (and callbacks) need."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from lightning_modules.errors import PocketbertError
from lightning_modules.hub import tokenizer_settings, vocab_tokens
from lightning_modules.metrics import ClassificationMetrics, confusion_figure


class Classifier(Protocol):
    """What callbacks and helpers need from a classifier LightningModule (the checkpoint contract of
    ``lightning_modules.checkpoints``): the label names in id order, the tokenizer whose ids the shipped model reads,
    the Hugging Face classifier that ships, and the hyperparameters (``max_length``, ``tokenizer``)."""

    label_names: list[str]
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel

    @property
    def hparams(self) -> Mapping[str, Any]: ...


def check_labels(label_names: list[str] | None, num_labels: int | None) -> list[str]:
    if not label_names:
        raise PocketbertError("label_names is empty: it comes from the DataModule through the CLI link; "
                              "when building the module by hand pass label_names=[...]")
    if num_labels is not None and num_labels != len(label_names):
        raise PocketbertError(f"num_labels is {num_labels} but the data has {len(label_names)} labels "
                              f"{label_names}; remove num_labels from the recipe or fix the label list")
    return label_names


def check_training_args(dropout: float, learning_rate: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise PocketbertError(f"dropout must be in [0, 1), got {dropout}")
    if learning_rate <= 0:
        raise PocketbertError(f"learning_rate must be positive, got {learning_rate}")


def raise_if_not_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise PocketbertError(f"the loss became {loss.item()} at step {step}; lower model.init_args.learning_rate "
                              "or use precision 32-true")


# Devices with a fused AdamW kernel in torch >= 2.4. On CPU torch otherwise steps every parameter tensor in a Python
# loop: news16_cpu.yaml (5.7M parameters, mostly embedding rows updated every step) trained 147 ms/step with it and
# 110 fused (benchmarks/train_throughput.py; the quickstart recipes: benchmarks/adamw_step.py, README).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_adamw(parameters: list[tuple[str, torch.nn.Parameter]], learning_rate: float, weight_decay: float,
                fused: bool = True) -> torch.optim.AdamW:
    """AdamW without decay on biases and LayerNorm; with ``fused``, torch's fused kernel where the device has one
    (the same update up to float rounding), else torch's default implementation."""
    trainable = [p for _, p in parameters if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    use_fused = fused and all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in trainable)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate, fused=True if use_fused else None,
    )


def adamw_with_linear_warmup(module: L.LightningModule, parameters: list[tuple[str, torch.nn.Parameter]]) -> Any:
    """AdamW (no decay on biases and LayerNorm; fused) with linear warmup then linear decay, stepped every batch;
    ``learning_rate``, ``weight_decay`` and ``warmup_ratio`` are the module's hyperparameters."""
    hp = module.hparams
    optimizer = build_adamw(parameters, hp["learning_rate"], hp["weight_decay"])
    total_steps = max(1, int(module.trainer.estimated_stepping_batches))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(hp["warmup_ratio"] * total_steps), total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def prediction(logits: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """What ``predict_step`` returns for ``callbacks.PredictionWriter``: class probabilities (batch, num_labels),
    the predicted ids and the rows' dataset indices."""
    probabilities = logits.float().softmax(dim=-1)
    return {"probabilities": probabilities, "predictions": probabilities.argmax(dim=-1), "index": index}


class StageMetrics(ClassificationMetrics):
    """The metrics of one evaluation stage (``val`` or ``test``): ``step`` logs the batch's cross-entropy and
    accumulates, ``epoch_end`` logs accuracy, macro-F1, per-class F1 and the confusion-matrix figure."""

    def __init__(self, stage: str, label_names: list[str]) -> None:
        super().__init__(len(label_names))
        self.stage = stage
        self.label_names = list(label_names)

    def step(self, module: L.LightningModule, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Log ``{stage}_loss`` (cross-entropy) and accumulate the epoch metrics of one batch."""
        logits = logits.float()
        module.log(f"{self.stage}_loss", F.cross_entropy(logits, labels), batch_size=len(logits), sync_dist=True)
        self.update(logits, labels)

    def epoch_end(self, module: L.LightningModule) -> dict[str, Any]:
        """Log the epoch's scalars and the confusion matrix as a TensorBoard figure, then reset."""
        stage, values = self.stage, self.compute()
        self.reset()
        # torchmetrics already synced these across ranks; sync_dist averages identical values (and keeps Lightning
        # quiet)
        module.log(f"{stage}_acc", values["acc"], prog_bar=True, sync_dist=True)
        module.log(f"{stage}_macro_f1", values["macro_f1"], prog_bar=True, sync_dist=True)
        for name, f1 in zip(self.label_names, values["per_class_f1"], strict=True):
            module.log(f"{stage}_f1/{name}", f1, sync_dist=True)
        logger = module.logger
        if isinstance(logger, TensorBoardLogger) and not module.trainer.sanity_checking and module.global_rank == 0:
            title = f"{stage} confusion matrix (epoch {module.current_epoch})"
            logger.experiment.add_figure(f"{stage}/confusion_matrix", confusion_figure(
                values["confusion"], self.label_names, title), module.global_step)
        return values


def save_export_info(module: Classifier, checkpoint: dict[str, Any]) -> None:
    """What exports need beside the weights (contract in ``lightning_modules.checkpoints``): labels, vocab, config."""
    checkpoint["pocketbert"] = {
        "label_names": list(module.label_names),
        "vocab": vocab_tokens(module.tokenizer),
        "max_length": int(module.hparams["max_length"]),
        "tokenizer": str(Path(module.hparams["tokenizer"])),
        # lower-casing, accent stripping, CJK splitting: the vocabulary alone does not decide the ids
        "tokenizer_settings": tokenizer_settings(module.tokenizer),
        "hf_class": type(module.model).__name__,
        "hf_config": module.model.config.to_dict(),
    }
