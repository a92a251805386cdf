from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lightning_modules import TextClassifier
from lightning_modules.datamodule import NewsDataModule
from lightning_modules.errors import PocketbertError
from lightning_modules.metrics import ClassificationMetrics
from tests.conftest import NEWS16
from tests.helpers import cpu_trainer, tiny_spec

TINY = tiny_spec("bert32")


def tiny_classifier(vocab_file: Path, **kwargs: object) -> TextClassifier:
    return TextClassifier(label_names=["a", "b", "c"], tokenizer=str(vocab_file), architecture=TINY,
                          **kwargs)  # type: ignore[arg-type]


def test_forward_shapes_and_checkpoint_carries_labels_and_vocab(vocab_file: Path, tmp_path: Path) -> None:
    model = tiny_classifier(vocab_file)
    ids = torch.tensor([[101, 860, 5509, 102], [101, 3173, 102, 0]])
    logits = model(ids, (ids != 0).long())
    assert logits.shape == (2, 3)
    assert model.model.config.id2label == {0: "a", 1: "b", 2: "c"}
    checkpoint: dict[str, object] = {}
    model.on_save_checkpoint(checkpoint)
    info = checkpoint["pocketbert"]
    assert info["label_names"] == ["a", "b", "c"] and info["vocab"][101] == "[CLS]"  # type: ignore[index]


def test_label_count_mismatch_is_an_error(vocab_file: Path) -> None:
    with pytest.raises(PocketbertError, match="num_labels is 4 but the data has 3 labels"):
        tiny_classifier(vocab_file, num_labels=4)
    with pytest.raises(PocketbertError, match="label_names is empty"):
        TextClassifier(label_names=None, tokenizer=str(vocab_file), architecture=TINY)


def test_metrics_match_hand_computation() -> None:
    metrics = ClassificationMetrics(3)
    logits = torch.eye(3)[[0, 1, 2, 2]]  # predictions 0, 1, 2, 2
    metrics.update(logits, torch.tensor([0, 1, 1, 2]))
    values = metrics.compute()
    assert values["acc"].item() == pytest.approx(0.75)
    # F1: class0 1.0, class1 (p=1, r=.5) 2/3, class2 (p=.5, r=1) 2/3
    assert values["macro_f1"].item() == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert values["confusion"].tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


class ForwardDtype(L.Callback):
    """Records the dtype of the model's logits inside the precision plugin's forward context (autocast)."""

    def __init__(self) -> None:
        self.dtype: torch.dtype | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, torch.Tensor],
                             batch_idx: int) -> None:
        if self.dtype is None:
            with trainer.precision_plugin.forward_context():
                self.dtype = pl_module(batch["input_ids"], batch["attention_mask"]).dtype


def test_bf16_mixed_fit_learns_like_fp32(vocab_file: Path, tmp_path: Path) -> None:
    """bf16-mixed on CPU is emulated (slow) here: checked for correctness on a tiny model only. It really runs in
    bf16, learns (3 classes: chance is 0.33 and a loss of ln 3 = 1.10), and ends where fp32 ends."""
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        L.seed_everything(0)
        dm = NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=NEWS16[:3], limit_per_class=60,
                            batch_size=8, cache_dir=tmp_path / "cache")
        model = TextClassifier(label_names=dm.label_names, tokenizer=dm.tokenizer_path, architecture=TINY,
                               learning_rate=3e-3)
        dtype = ForwardDtype()
        options: dict[str, Any] = {"precision": precision}
        trainer = cpu_trainer(max_epochs=6, callbacks=[dtype], **options)
        trainer.fit(model, datamodule=dm)
        results[precision] = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" not in k}
        assert dtype.dtype == (torch.bfloat16 if precision == "bf16-mixed" else torch.float32)
    for metrics in results.values():  # measured: val_loss 0.603, val_acc 0.630 in both
        assert metrics["val_loss"] < 0.8 and metrics["val_acc"] > 0.55, results
    assert results["bf16-mixed"]["val_loss"] == pytest.approx(results["32-true"]["val_loss"], abs=0.02)
    assert results["bf16-mixed"]["train_loss"] == pytest.approx(results["32-true"]["train_loss"], abs=0.02)


def test_checkpoint_rebuilds_the_exportable_model(vocab_file: Path, tmp_path: Path) -> None:
    from lightning_modules.checkpoints import load_exportable, read_checkpoint

    L.seed_everything(0)
    dm = NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=NEWS16[:3], limit_per_class=10,
                        batch_size=8, cache_dir=tmp_path / "cache")
    model = TextClassifier(label_names=dm.label_names, tokenizer=dm.tokenizer_path, architecture=TINY)
    trainer = cpu_trainer(default_root_dir=tmp_path, enable_checkpointing=True)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    exportable = load_exportable(path)
    assert exportable.label_names == NEWS16[:3] and exportable.max_length == 128 and len(exportable.vocab) == 21128
    ids = torch.tensor([[101, 860, 5509, 102]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(exportable.model(input_ids=ids).logits, model(ids, torch.ones_like(ids)), atol=1e-6)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(PocketbertError, match="truncated or corrupted"):
        read_checkpoint(truncated)
    reloaded = TextClassifier.load_from_checkpoint(path, weights_only=True)
    assert reloaded.label_names == NEWS16[:3]
