"""What the export compares before it writes a number: the data's labels against the checkpoint's (by name), and the
tokenizer an app rebuilds from ``vocab.txt`` against the one training used (lower-casing etc. saved in checkpoints)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from callbacks.context import eval_set, train_split
from export import ExportContext, ExportError, ShippedModel
from export.assets import EDGE_CASES, normalize
from export.steps import tokenizer_agreement
from lightning_modules import TextClassifier
from lightning_modules.corpus import normalize_text
from lightning_modules.datamodule import NewsDataModule
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import PACKAGED_VOCAB, load_tokenizer, tokenizer_settings, vocab_tokens
from lightning_modules.teacher_cache import load_teacher
from lightning_modules.token_cache import tokenizer_fingerprint
from tests.helpers import tiny_spec

LABELS = ["sports", "finance", "car"]
TINY = tiny_spec("bert16")


def tiny_model(num_labels: int) -> BertForSequenceClassification:
    config = BertConfig(vocab_size=21128, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def news(tmp_path: Path, labels: list[str], **kwargs: Any) -> NewsDataModule:
    return NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=labels, limit_per_class=40,
                          cache_dir=tmp_path / "cache", **kwargs)


def test_export_scores_reordered_labels_by_name_and_refuses_other_labels(tmp_path: Path) -> None:
    """A config whose label list is in another order than the checkpoint's: every label id is the checkpoint's."""
    data = news(tmp_path, ["car", "sports", "finance"])
    shipped = ShippedModel(tiny_model(3), LABELS, vocab_tokens(data.tokenizer), 64)
    examples, _, _ = eval_set(data, shipped)
    assert examples.labels == [LABELS.index(str(name)) for name in data.true_labels["test"]]
    assert examples.labels != data.datasets["test"].labels.tolist()  # the data's own ids would score other classes
    _, train_labels = train_split(data, shipped)
    assert train_labels == [LABELS.index(str(name)) for name in data.true_labels["train"]]
    other = news(tmp_path, ["sports", "finance", "game"])
    with pytest.raises(ExportError, match=re.escape("in the data only: ['game']; in the checkpoint only: ['car']")):
        eval_set(other, shipped)


@pytest.fixture(scope="module")
def cased_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer directory (tokenizer.json, as from the hub) over bert-base-chinese's vocabulary, keeping case."""
    folder = tmp_path_factory.mktemp("cased")
    BertTokenizer(vocab=load_tokenizer(PACKAGED_VOCAB).get_vocab(), do_lower_case=False).save_pretrained(folder)
    return folder


def test_pruned_export_compares_the_app_tokenizer_with_the_training_ids(tmp_path: Path,
                                                                        cased_tokenizer_dir: Path) -> None:
    data = news(tmp_path, ["tech", "game", "car"], tokenizer=str(cased_tokenizer_dir))
    assert tokenizer_settings(data.tokenizer)["lowercase"] is False
    vocab = vocab_tokens(data.tokenizer)
    vocab[1], vocab[2] = vocab[2], vocab[1]  # another vocabulary than training's (as pruning makes one)
    cased = ShippedModel(tiny_model(3), ["tech", "game", "car"], vocab, 128,
                         tokenizer_settings=tokenizer_settings(data.tokenizer))
    examples, texts, training = eval_set(data, cased)
    assert training is not None and examples.token_ids == training  # the app tokenizes as training did
    context = ExportContext(cased, examples, tmp_path / "export", texts=texts, training_ids=training)
    assert tokenizer_agreement(context) == {"vocab_tokenizer_matches_test_ids": 1.0, "checked_texts": len(texts)}

    # A checkpoint without the settings: the rebuilt tokenizer lower-cases, so every text with a capital differs
    # from what training saw, and the check says so instead of comparing the rebuilt tokenizer with itself.
    unrecorded = ShippedModel(cased.model, cased.label_names, vocab, 128)
    examples, texts, training = eval_set(data, unrecorded)
    capitals = sum(bool(re.search("[A-Z]", text)) for text in texts)
    assert capitals >= 3, "the slice needs texts with capitals"
    context = ExportContext(unrecorded, examples, tmp_path / "export", texts=texts, training_ids=training)
    assert tokenizer_agreement(context)["vocab_tokenizer_matches_test_ids"] == pytest.approx(
        1 - capitals / len(texts))


def checkpoint_of(model: TextClassifier, path: Path) -> Path:
    checkpoint: dict[str, object] = {"state_dict": {f"model.{k}": v for k, v in model.model.state_dict().items()}}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_checkpoint_keeps_tokenizer_settings_and_the_teacher_uses_them(tmp_path: Path,
                                                                        cased_tokenizer_dir: Path) -> None:
    model = TextClassifier(label_names=LABELS, tokenizer=str(cased_tokenizer_dir), architecture=TINY)
    path = checkpoint_of(model, tmp_path / "teacher.ckpt")
    saved = torch.load(path, weights_only=True)["pocketbert"]["tokenizer_settings"]
    assert saved["lowercase"] is False and saved["class"] == "BertTokenizer" and saved["handle_chinese_chars"]
    teacher = load_teacher(path)
    text = "iPhone发布NBA新闻"
    assert teacher.tokenizer(text)["input_ids"] == model.tokenizer(text)["input_ids"]
    assert teacher.tokenizer(text)["input_ids"] != load_tokenizer(PACKAGED_VOCAB)(text)["input_ids"]

    foreign = torch.load(path, weights_only=True)
    foreign["pocketbert"]["tokenizer_settings"]["class"] = "XLMRobertaTokenizer"
    torch.save(foreign, tmp_path / "foreign.ckpt")
    with pytest.raises(PocketbertError, match="trained with a XLMRobertaTokenizer tokenizer"):
        load_teacher(tmp_path / "foreign.ckpt")


def test_token_cache_key_covers_the_tokenizer_settings() -> None:
    vocab = load_tokenizer(PACKAGED_VOCAB).get_vocab()
    plain = BertTokenizer(vocab=vocab)
    assert tokenizer_fingerprint(plain) == tokenizer_fingerprint(BertTokenizer(vocab=vocab))
    changes: list[dict[str, Any]] = [{"strip_accents": False}, {"tokenize_chinese_chars": False},
                                     {"do_lower_case": False}]
    for changed in changes:
        other = BertTokenizer(vocab=vocab, **changed)
        assert other("Café 中国")["input_ids"] != plain("Café 中国")["input_ids"], changed
        assert tokenizer_fingerprint(other) != tokenizer_fingerprint(plain), changed


def test_app_normalization_equals_the_training_one() -> None:
    """The normalization the bundle tells apps to apply (``export.assets.normalize``) is the one the DataModule
    applied to the training texts (``corpus.normalize_text``), on every golden edge case and on odd whitespace."""
    samples = [*EDGE_CASES, " \u3000全角空格\u00a0与 不换行 ", "ＡＢＣ１２３\t\n换行", "", "   "]
    assert [normalize(text) for text in samples] == [normalize_text(text) for text in samples]
