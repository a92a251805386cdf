"""Masked-LM pretraining: BERT's masking statistics, whole-word masking, the held-out texts kept out, and the
Hugging Face directory it writes loading into a classifier (with its vocabulary checked)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_modules import (
    MaskedLMPretraining,
    NewsDataModule,
    PretrainingDataModule,
    TextClassifier,
    TextSource,
)
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import load_tokenizer
from recipes.__main__ import main
from tests.conftest import NEWS16
from tests.helpers import cpu_trainer, tiny_spec

ENCODER = tiny_spec("ngram32")
LABELS = NEWS16[:4]


def task(cache_dir: Path, per_class: int = 150) -> NewsDataModule:
    return NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=LABELS, limit_per_class=per_class,
                          max_length=64, cache_dir=cache_dir)


def pretrainer(vocab_file: Path, **kwargs: object) -> MaskedLMPretraining:
    return MaskedLMPretraining(tokenizer=str(vocab_file), max_length=64, architecture=ENCODER, **kwargs)  # type: ignore[arg-type]


def test_bert_masking_statistics_on_real_tokens(vocab_file: Path, tmp_path: Path) -> None:
    dm = task(tmp_path, per_class=500)
    dm.setup()
    batch = next(iter(torch.utils.data.DataLoader(dm.datasets["train"], batch_size=1400,
                                                  collate_fn=dm.train_dataloader().collate_fn)))
    module = pretrainer(vocab_file)
    ids = batch["input_ids"]
    corrupted, chosen = module.mask_tokens(ids, torch.Generator().manual_seed(0))
    real = module.maskable[ids]
    assert not chosen[~real].any()  # [CLS], [SEP] and [PAD] are never predicted
    assert chosen[real].float().mean().item() == pytest.approx(0.15, abs=0.01)
    masked = (corrupted[chosen] == module.tokenizer.mask_token_id).float().mean().item()
    kept = (corrupted[chosen] == ids[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1 + 0.1 / 21128, abs=0.02)
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_whole_word_masking_chooses_a_word_with_its_continuations(vocab_file: Path) -> None:
    module = pretrainer(vocab_file, whole_word_masking=True, mask_probability=0.5)
    tokenizer = module.tokenizer
    ids = torch.tensor([tokenizer("playstation portable 发布 unbelievable news")["input_ids"]] * 200)
    continuation = module.continuation[ids]
    assert continuation.any()  # the text has ## pieces
    _, chosen = module.mask_tokens(ids, torch.Generator().manual_seed(0))
    for row in range(len(ids)):
        for position in torch.nonzero(continuation[row]).flatten().tolist():
            start = position
            while continuation[row, start]:
                start -= 1
            assert chosen[row, position] == chosen[row, start]  # a piece goes with the start of its word


def test_task_val_and_test_texts_never_enter_pretraining(tmp_path: Path, vocab_file: Path) -> None:
    downstream = task(tmp_path / "cache")
    held_out = downstream.cleaned_splits["test"][0][:5]
    extra = tmp_path / "mine.txt"  # a user's file that happens to contain 5 test headlines and 2 new texts
    extra.write_text("\n".join([e.text for e in held_out] + ["一条全新的标题", "另一条全新的标题"]), "utf-8")
    dm = PretrainingDataModule(task=downstream, files=[TextSource(path=str(extra))], cache_dir=tmp_path / "cache")
    train, validation, report = dm.corpus
    heldout = {e.text for name in ("val", "test") for e in downstream.cleaned_splits[name][0]}
    assert report.heldout_matches_dropped == 5 and report.overlap_with_task_heldout == 0
    assert not heldout & (set(train) | set(validation)) and "一条全新的标题" in set(train) | set(validation)
    assert report.sources == {"task train split": 424, str(extra): 7}
    assert len(train) + len(validation) == 424 + 2


def test_pretrained_directory_loads_into_a_classifier(tmp_path: Path, vocab_file: Path) -> None:
    L.seed_everything(0)
    dm = PretrainingDataModule(task=task(tmp_path / "cache"), batch_size=32, cache_dir=tmp_path / "cache")
    module = pretrainer(vocab_file, learning_rate=3e-3)
    trainer = cpu_trainer(max_epochs=3, default_root_dir=tmp_path, enable_checkpointing=True,
                          logger=L.pytorch.loggers.CSVLogger(tmp_path))
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val_mlm_loss"]  # ~ln(21128) = 9.96
    trainer.fit(module, datamodule=dm)
    assert trainer.callback_metrics["val_mlm_loss"] < before - 1.0  # it learned at least the character frequencies
    folder = Path(trainer.log_dir) / "pretrained"  # type: ignore[arg-type]
    report = json.loads((folder / "pretraining.json").read_text())
    assert report["text"]["overlap_with_task_heldout"] == 0 and (folder / "vocab.txt").is_file()
    classifier = TextClassifier(label_names=LABELS, tokenizer=str(vocab_file), pretrained=str(folder))
    assert type(classifier.model).__name__ == "NgramBertForSequenceClassification"
    for name, tensor in module.model.base_model.state_dict().items():
        assert torch.equal(classifier.model.base_model.state_dict()[name], tensor), name  # the encoder carried over
    other_vocab = tmp_path / "other_vocab.txt"
    other_vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "国"]), "utf-8")
    with pytest.raises(PocketbertError, match="was trained with another vocabulary"):
        TextClassifier(label_names=LABELS, tokenizer=str(other_vocab), pretrained=str(folder))
    assert load_tokenizer(folder)("中国")["input_ids"] == module.tokenizer("中国")["input_ids"]


def test_pretraining_without_text_or_with_both_model_sources_is_refused(vocab_file: Path) -> None:
    with pytest.raises(PocketbertError, match="pretraining needs text"):
        PretrainingDataModule()
    with pytest.raises(PocketbertError, match="exactly one of"):
        MaskedLMPretraining(tokenizer=str(vocab_file), architecture=ENCODER, pretrained="somewhere")


def test_hub_pretraining_recipe_fails_fast_offline(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fit", "--config", "news16_pretrain.yaml", "--trainer.max_epochs", "1"])
    assert code == 2
    assert "Hugging Face Hub is unreachable" in capsys.readouterr().err
