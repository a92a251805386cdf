"""The model being shipped, and the export graph every format is produced from.

A stock Hugging Face classifier builds its attention mask with helpers that neither ``torch.jit.trace`` nor plain
``torch.export`` hand to Core ML cleanly; :class:`ClassifierGraph` builds the additive mask itself and calls
embeddings -> encoder layers -> pooler -> classifier, which exports to ONNX, TorchScript and Core ML alike.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn
from transformers import BertTokenizer, PreTrainedModel

from export import ngram_bert  # noqa: F401  (registers ngram_bert with the Auto classes for load_hf_dir)
from export.assets import build_tokenizer
from export.errors import ExportError

# Encoder families whose layers take (hidden_states, additive_mask) and whose pooled output feeds a Linear head.
SUPPORTED_MODEL_TYPES = ("bert", "mobilebert", "ngram_bert")
MASK_VALUE = -1.0e4  # additive mask for padded keys; fp16-safe (Core ML runs fp16), exp(-1e4) is 0 in fp32 too
PARITY_TOLERANCE = 1e-3  # max |logit difference| an exported graph may show against PyTorch fp32
MIN_SEQUENCE = 3  # [CLS] token [SEP]; MobileBERT's trigram embedding also needs 3 to trace with a dynamic length


@dataclass
class ShippedModel:
    """The classifier that ships, with what an app needs beside its weights."""

    model: PreTrainedModel  # eval mode, CPU, fp32
    label_names: list[str]
    vocab: list[str]  # tokens in id order (the model's ids index this list)
    max_length: int
    source: str = ""  # the checkpoint it came from
    tokenizer_settings: dict[str, Any] | None = None  # lower-casing etc. of the training tokenizer (None: defaults)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def tokenizer(self) -> BertTokenizer:
        """The WordPiece tokenizer an app rebuilds from ``vocab.txt`` and the recorded settings."""
        return build_tokenizer(self.vocab, self.tokenizer_settings)


def check_exportable(model: nn.Module) -> None:
    """Raise a one-line :class:`ExportError` unless ``model`` is a classifier :class:`ClassifierGraph` supports."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    base = getattr(model, "base_model", None)
    ok = (model_type in SUPPORTED_MODEL_TYPES and base is not None and hasattr(base, "embeddings")
          and hasattr(getattr(base, "encoder", None), "layer") and getattr(base, "pooler", None) is not None
          and isinstance(getattr(model, "classifier", None), nn.Linear))
    if not ok:
        raise ExportError(f"cannot export a {type(model).__name__} (model_type {model_type!r}): the exporters support "
                          f"{'/'.join(SUPPORTED_MODEL_TYPES)} sequence classifiers with a pooler and a Linear "
                          "classifier; train a BERT or MobileBERT student (EncoderSpec kind bert|mobilebert)")


def prepare(model: PreTrainedModel) -> PreTrainedModel:
    """A CPU fp32 eval copy using plain (eager) attention, so exported graphs hold portable matmul/softmax ops."""
    check_exportable(model)
    clone: Any = copy.deepcopy(model)
    clone = clone.to(device="cpu", dtype=torch.float32).eval()
    clone.set_attn_implementation("eager")
    result: PreTrainedModel = clone
    return result


class ClassifierGraph(nn.Module):
    """``(input_ids, attention_mask) -> logits`` (or pooled ``features``) without the HF mask helpers.

    Shapes: input_ids, attention_mask (batch, seq) of any integer type; logits (batch, num_labels);
    features (batch, hidden). With ``squeeze_batch`` the batch axis (of size 1) is dropped from the output, the
    rank-1 layout a NeuralNetwork head takes.
    """

    def __init__(self, model: PreTrainedModel, output: Literal["logits", "features"] = "logits",
                 squeeze_batch: bool = False) -> None:
        super().__init__()
        check_exportable(model)
        base: Any = model.base_model
        self.embeddings = base.embeddings
        self.layers = base.encoder.layer
        self.pooler = base.pooler
        # ngram_bert pools with the mask (mean pooling, the n-gram bag); BERT and MobileBERT read [CLS] alone
        self.pooled_features = getattr(base, "pooled_features", None)
        self.classifier = cast(nn.Linear, model.classifier)
        self.output = output
        self.squeeze_batch = squeeze_batch

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * MASK_VALUE  # (batch, 1, 1, seq)
        # Explicit ids: slicing the registered position_ids buffer leaves an `alias` node Core ML cannot convert.
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, seq)
        hidden = self.embeddings(input_ids=input_ids, position_ids=position_ids,
                                 token_type_ids=torch.zeros_like(input_ids))  # (batch, seq, hidden)
        for layer in self.layers:
            hidden = layer(hidden, mask)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        if self.pooled_features is not None:
            result = self.pooled_features(hidden, input_ids, attention_mask)  # (batch, features)
        else:
            result = self.pooler(hidden)  # (batch, hidden)
        if self.output == "logits":
            result = self.classifier(result)  # (batch, num_labels)
        return result[0] if self.squeeze_batch else result


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers 5 draws tqdm bars ("Loading weights", "Writing model shards") for every save and load, even of a
    tiny model; its own switch turns them off for the block."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_hf_dir(path: Path) -> PreTrainedModel:
    """The fp32 classifier saved by :func:`export.torch_export.save_pytorch` (``save_pretrained`` layout)."""
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True).eval()
