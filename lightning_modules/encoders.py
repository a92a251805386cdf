"""Sequence classifiers built from an architecture spec (from scratch) or loaded with ``from_pretrained``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    MobileBertConfig,
    MobileBertForSequenceClassification,
    PreTrainedModel,
)

from lightning_modules.errors import PocketbertError
from lightning_modules.hub import resolve_pretrained


@dataclass
class EncoderSpec:
    """A BERT-style encoder trained from scratch.

    Args:
        num_layers: Transformer layers.
        hidden_size: Hidden width; must be divisible by ``num_heads``.
        num_heads: Attention heads.
        intermediate_size: Feed-forward width.
        max_position_embeddings: Longest sequence the position embeddings cover.
        kind: ``bert`` (also the shape of ``uer/chinese_roberta_*``) or ``mobilebert`` (bottleneck layers).
        embedding_size: MobileBERT's embedding width (ignored for ``bert``).
        intra_bottleneck_size: MobileBERT's bottleneck width (ignored for ``bert``).
    """

    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    kind: Literal["bert", "mobilebert"] = "bert"
    embedding_size: int = 128
    intra_bottleneck_size: int = 128


PRESETS: dict[str, EncoderSpec] = {
    # Shaped like uer/chinese_roberta_L-4_H-512 (a BERT architecture with RoBERTa-style pretraining).
    "roberta_l4_h512": EncoderSpec(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    # Shaped like google/mobilebert-uncased: 24 thin bottleneck layers.
    "mobilebert": EncoderSpec(num_layers=24, hidden_size=512, num_heads=4, intermediate_size=512,
                              kind="mobilebert", embedding_size=128, intra_bottleneck_size=128),
    "tiny": EncoderSpec(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
}


def build_from_spec(
    spec: EncoderSpec, *, vocab_size: int, pad_token_id: int, label_names: list[str], dropout: float
) -> PreTrainedModel:
    """A randomly initialized classifier of shape ``spec``."""
    if spec.hidden_size % spec.num_heads:
        raise PocketbertError(f"hidden_size {spec.hidden_size} is not divisible by num_heads {spec.num_heads}")
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "pad_token_id": pad_token_id,
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    if spec.kind == "mobilebert":
        config = MobileBertConfig(
            embedding_size=spec.embedding_size, intra_bottleneck_size=spec.intra_bottleneck_size, **common
        )
        return MobileBertForSequenceClassification(config)
    return BertForSequenceClassification(BertConfig(**common))


def load_pretrained(
    name_or_path: str, *, label_names: list[str], dropout: float, trust_remote_code: bool = False
) -> PreTrainedModel:
    """``AutoModelForSequenceClassification.from_pretrained`` with a fresh head for ``label_names``."""
    resolved, local_only = resolve_pretrained(name_or_path)
    return AutoModelForSequenceClassification.from_pretrained(
        resolved,
        local_files_only=local_only,
        trust_remote_code=trust_remote_code,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        hidden_dropout_prob=dropout,
        ignore_mismatched_sizes=True,
    )
