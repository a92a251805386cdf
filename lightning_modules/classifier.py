"""The classifier LightningModule: fine-tunes a pretrained encoder or trains one from scratch."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from typing_extensions import override

from lightning_modules.encoders import EncoderSpec, build_classifier, fill_ngram_vocabulary
from lightning_modules.hub import load_tokenizer
from lightning_modules.training import (
    StageMetrics,
    adamw_with_linear_warmup,
    check_labels,
    check_training_args,
    prediction,
    raise_if_not_finite,
    save_export_info,
)


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
        source = pretrained if pretrained is not None else architecture or EncoderSpec()
        self.model: PreTrainedModel = build_classifier(source, tokenizer=self.tokenizer, label_names=self.label_names,
                                                       dropout=dropout, trust_remote_code=trust_remote_code)
        self.val_metrics = StageMetrics("val", self.label_names)
        self.test_metrics = StageMetrics("test", self.label_names)

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            fill_ngram_vocabulary(self.model, getattr(self.trainer, "datamodule", None))

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
        self.val_metrics.step(self, self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    @override
    def on_validation_epoch_end(self) -> None:
        self.val_metrics.epoch_end(self)

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_metrics.step(self, self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    @override
    def on_test_epoch_end(self) -> None:
        self.test_metrics.epoch_end(self)

    @override
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return prediction(self(batch["input_ids"], batch["attention_mask"]), batch["index"])

    @override
    def configure_optimizers(self) -> Any:
        return adamw_with_linear_warmup(self, list(self.model.named_parameters()))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_export_info(self, checkpoint)
