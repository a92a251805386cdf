"""The classifier LightningModule: fine-tunes a pretrained encoder or trains one from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup
from typing_extensions import override

from lightning_modules.encoders import EncoderSpec, build_from_spec, load_pretrained
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import load_tokenizer, tokenizer_settings, vocab_tokens
from lightning_modules.metrics import ClassificationMetrics, confusion_figure


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


def adamw_with_linear_warmup(
    module: L.LightningModule, parameters: list[tuple[str, torch.nn.Parameter]], learning_rate: float,
    weight_decay: float, warmup_ratio: float,
) -> Any:
    """AdamW (no decay on biases and LayerNorm; fused) with linear warmup then linear decay, stepped every batch."""
    optimizer = build_adamw(parameters, learning_rate, weight_decay)
    total_steps = max(1, int(module.trainer.estimated_stepping_batches))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TextClassifier(L.LightningModule):
    """A sequence classifier trained with cross-entropy on hard labels.

    Args:
        label_names: Class names in id order; linked from the DataModule, saved in the checkpoint.
        tokenizer: Tokenizer (vocab file, directory or hub name); linked from the DataModule.
        max_length: Longest token sequence; linked from the DataModule, used by exports.
        pretrained: Hub name or local directory for ``from_pretrained`` (e.g. ``bert-base-chinese``).
        architecture: Encoder shape for training from scratch (used when ``pretrained`` is not set).
        num_labels: Optional check: fails fast when the data's label count differs.
        dropout: Dropout of hidden states and attention probabilities.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm).
        warmup_ratio: Fraction of the training steps spent warming the learning rate up linearly.
        trust_remote_code: Allow model code from the hub; off unless a recipe turns it on.
    """

    def __init__(
        self,
        label_names: list[str] | None = None,
        tokenizer: str = "vocab/bert-base-chinese-vocab.txt",
        max_length: int = 128,
        pretrained: str | None = None,
        architecture: EncoderSpec | None = None,
        num_labels: int | None = None,
        dropout: float = 0.1,
        learning_rate: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.label_names = check_labels(label_names, num_labels)
        check_training_args(dropout, learning_rate)
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        self.model: PreTrainedModel
        if pretrained is not None:
            self.model = load_pretrained(pretrained, label_names=self.label_names, dropout=dropout,
                                         tokenizer=self.tokenizer, trust_remote_code=trust_remote_code)
        else:
            self.model = build_from_spec(architecture or EncoderSpec(), vocab_size=len(self.tokenizer),
                                         pad_token_id=int(self.tokenizer.pad_token_id or 0),
                                         label_names=self.label_names, dropout=dropout)
        self.val_metrics = ClassificationMetrics(len(self.label_names))
        self.test_metrics = ClassificationMetrics(len(self.label_names))

    @override
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (batch, num_labels)

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        raise_if_not_finite(loss, self.global_step)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    @override
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        probabilities = self(batch["input_ids"], batch["attention_mask"]).float().softmax(dim=-1)
        return {"probabilities": probabilities, "predictions": probabilities.argmax(dim=-1), "index": batch["index"]}

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str, metrics: ClassificationMetrics) -> None:
        log_eval_step(self, stage, self(batch["input_ids"], batch["attention_mask"]), batch["labels"], metrics)

    @override
    def on_validation_epoch_end(self) -> None:
        log_epoch_metrics(self, "val", self.val_metrics)

    @override
    def on_test_epoch_end(self) -> None:
        log_epoch_metrics(self, "test", self.test_metrics)

    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_linear_warmup(self, list(self.model.named_parameters()), hp["learning_rate"],
                                        hp["weight_decay"], hp["warmup_ratio"])

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_export_info(self, checkpoint)


def raise_if_not_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise PocketbertError(f"the loss became {loss.item()} at step {step}; lower model.init_args.learning_rate "
                              "or use precision 32-true")


def log_eval_step(module: L.LightningModule, stage: str, logits: torch.Tensor, labels: torch.Tensor,
                  metrics: ClassificationMetrics) -> None:
    """Log ``{stage}_loss`` (cross-entropy) and accumulate the epoch metrics of one validation/test batch."""
    logits = logits.float()
    module.log(f"{stage}_loss", F.cross_entropy(logits, labels), batch_size=len(logits), sync_dist=True)
    metrics.update(logits, labels)


def log_epoch_metrics(module: L.LightningModule, stage: str, metrics: ClassificationMetrics) -> dict[str, Any]:
    """Log accuracy, macro-F1 and per-class F1 as scalars and the confusion matrix as a TensorBoard figure."""
    values = metrics.compute()
    metrics.reset()
    label_names: list[str] = module.label_names  # type: ignore[assignment]
    # torchmetrics already synced these across ranks; sync_dist averages identical values (and keeps Lightning quiet)
    module.log(f"{stage}_acc", values["acc"], prog_bar=True, sync_dist=True)
    module.log(f"{stage}_macro_f1", values["macro_f1"], prog_bar=True, sync_dist=True)
    for name, f1 in zip(label_names, values["per_class_f1"], strict=True):
        module.log(f"{stage}_f1/{name}", f1, sync_dist=True)
    if isinstance(module.logger, TensorBoardLogger) and not module.trainer.sanity_checking and module.global_rank == 0:
        title = f"{stage} confusion matrix (epoch {module.current_epoch})"
        module.logger.experiment.add_figure(f"{stage}/confusion_matrix", confusion_figure(
            values["confusion"], label_names, title), module.global_step)
    return values


def save_export_info(module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """What exports need beside the weights (contract in ``lightning_modules.checkpoints``): labels, vocab, config."""
    checkpoint["pocketbert"] = {
        "label_names": list(module.label_names),  # type: ignore[arg-type]
        "vocab": vocab_tokens(module.tokenizer),  # type: ignore[arg-type]
        "max_length": int(module.hparams["max_length"]),
        "tokenizer": str(Path(module.hparams["tokenizer"])),
        # lower-casing, accent stripping, CJK splitting: the vocabulary alone does not decide the ids
        "tokenizer_settings": tokenizer_settings(cast(PreTrainedTokenizerBase, module.tokenizer)),
        "hf_class": type(module.model).__name__,
        "hf_config": module.model.config.to_dict(),  # type: ignore[union-attr, operator]
    }
