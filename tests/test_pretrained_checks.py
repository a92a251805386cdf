"""A pretrained model is checked against the data tokenizer before it trains: embedding count, its own tokenizer's ids
on sample texts, and weights of another shape than its config (only the classification head may be re-made)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from lightning_modules import TextClassifier
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import PACKAGED_VOCAB, load_tokenizer

LABELS = ["sports", "finance", "car"]


def save_model(folder: Path, vocab_size: int, num_labels: int = 2) -> Path:
    """A tiny pretrained BERT classifier directory (config + weights, no tokenizer files)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def classifier(folder: Path) -> TextClassifier:
    return TextClassifier(label_names=LABELS, tokenizer=str(PACKAGED_VOCAB), pretrained=str(folder))


def test_matching_model_loads_with_a_new_head(tmp_path: Path) -> None:
    folder = save_model(tmp_path / "ok", 21128, num_labels=2)
    model = classifier(folder).model
    assert model.classifier.out_features == 3  # the head alone is re-made for 3 labels
    # trains with dropout on: from_pretrained returns eval mode, which Lightning would keep for the whole fit
    assert model.training and all(module.training for module in model.modules())
    saved = BertForSequenceClassification.from_pretrained(folder)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved.bert.embeddings.word_embeddings.weight)


def test_model_with_fewer_embeddings_than_the_tokenizer_is_refused(tmp_path: Path) -> None:
    folder = save_model(tmp_path / "small", 100)
    with pytest.raises(PocketbertError, match=re.escape("has 100 token embeddings but the data tokenizer has 21128 "
                                                        "tokens; set data.init_args.tokenizer")):
        classifier(folder)


def test_encoder_weights_of_another_shape_are_not_silently_reinitialized(tmp_path: Path) -> None:
    folder = save_model(tmp_path / "edited", 100)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 21128  # the config claims the tokenizer's size; the saved embedding has 100 rows
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PocketbertError, match=re.escape("bert.embeddings.word_embeddings.weight: (100, 16) saved, "
                                                        "(21128, 16) expected; 1 such weights); only the "
                                                        "classification head may differ")):
        classifier(folder)


def test_model_whose_own_tokenizer_gives_other_ids_is_refused(tmp_path: Path) -> None:
    folder = save_model(tmp_path / "cased", 21128)
    # the same vocabulary (vocab.txt matches token for token) but a tokenizer that keeps case
    BertTokenizer(vocab=load_tokenizer(PACKAGED_VOCAB).get_vocab(), do_lower_case=False).save_pretrained(folder)
    with pytest.raises(PocketbertError, match=r"tokenizer gives other ids than the data tokenizer \(for 'iPhone 15"):
        classifier(folder)
    assert TextClassifier(label_names=LABELS, tokenizer=str(folder), pretrained=str(folder)).model is not None
