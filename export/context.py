"""What every exporter receives: the shipped model, the real test set, the export folder and a metrics writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from transformers import BertTokenizer

from export.evaluation import EvalSet, hf_predictor, predict_all
from export.graph import ShippedModel


class ScalarWriter(Protocol):
    """The part of TensorBoard's ``SummaryWriter`` the exporters use."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...

    def add_text(self, tag: str, text_string: str, global_step: int | None = None) -> Any: ...


@runtime_checkable
class Exporter(Protocol):
    """What ``python -m recipes export`` calls on each exporting callback (``OnnxExport``, ``CoreMLExport``, ...): the
    same step its ``on_fit_end`` runs, on a context built from a checkpoint instead of a finished fit."""

    def export(self, context: ExportContext) -> Any: ...


@dataclass
class ExportContext:
    shipped: ShippedModel
    eval_set: EvalSet  # the real test set, in the shipped model's token ids
    export_dir: Path
    texts: list[str] = field(default_factory=list)  # test texts (golden token samples), normalized as in training
    train_texts: list[str] = field(default_factory=list)  # the training split (the baseline is fitted on it)
    train_labels: list[int] = field(default_factory=list)
    writer: ScalarWriter | None = None
    step: int = 0
    # The test texts as the training tokenizer tokenized them, mapped into the shipped vocabulary by token; None when
    # the eval set's ids are those (the shipped vocabulary is the training one). What the shipped tokenizer must match.
    training_ids: list[list[int]] | None = None

    @cached_property
    def tokenizer(self) -> BertTokenizer:
        return self.shipped.tokenizer()

    @cached_property
    def reference_logits(self) -> np.ndarray:
        """PyTorch fp32 logits of the shipped model on the test set: what every export is compared against."""
        return predict_all(hf_predictor(self.shipped.model), self.eval_set)
