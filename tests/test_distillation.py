"""DistillationModule: the loss against a hand computation, checkpoints without the teacher that load back, the
teacher-logit cache and vocabulary pruning, on tiny models and slices of the real NLPCC data."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_modules import DistillationModule, NewsDataModule, TextClassifier, load_exportable
from lightning_modules.distillation import PresetName
from lightning_modules.encoders import PRESETS
from lightning_modules.errors import PocketbertError
from lightning_modules.losses import distillation_loss, hidden_state_loss
from lightning_modules.teacher_cache import cached_teacher_logits, load_teacher
from lightning_modules.token_cache import tokenize
from lightning_modules.vocab_pruning import PrunedVocab
from tests.conftest import NEWS16
from tests.helpers import cpu_trainer, tiny_spec, train_tiny_teacher

LABELS = NEWS16[:3]  # baby, car, discovery
TEACHER = tiny_spec("teacher32")
STUDENT = tiny_spec("student16")


def trainer(tmp_path: Path, **kwargs: object) -> L.Trainer:
    return cpu_trainer(default_root_dir=tmp_path, **kwargs)


def datamodule(cache_dir: Path, per_class: int = 40, labels: list[str] = LABELS) -> NewsDataModule:
    return NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=labels, limit_per_class=per_class,
                          batch_size=16, cache_dir=cache_dir)


def train_teacher(path: Path, cache_dir: Path) -> Path:
    return train_tiny_teacher(path, TEACHER, labels=LABELS, limit_per_class=40, batch_size=16, max_epochs=2,
                              cache_dir=cache_dir)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    train_teacher(folder / "teacher.ckpt", folder / "cache")
    return folder


def student(teacher_dir: Path, dm: NewsDataModule, **kwargs: object) -> DistillationModule:
    return DistillationModule(teacher_checkpoint=teacher_dir / "teacher.ckpt", label_names=dm.label_names,
                              tokenizer=dm.tokenizer_path, **{"architecture": STUDENT, **kwargs})  # type: ignore[arg-type]


def test_loss_matches_hand_computation() -> None:
    student_logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher_logits = torch.tensor([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5]])
    labels = torch.tensor([0, 2])
    alpha, t = 0.3, 2.0

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(v) for v in row]
        return [e / sum(exps) for e in exps]

    ce = kl = 0.0
    for s, te, y in zip(student_logits.tolist(), teacher_logits.tolist(), labels.tolist(), strict=True):
        ce -= math.log(softmax(s)[y]) / 2
        p, q = softmax([v / t for v in te]), softmax([v / t for v in s])
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)) / 2
    loss = distillation_loss(student_logits, teacher_logits, labels, alpha=alpha, temperature=t)
    assert loss.hard.item() == pytest.approx(ce, rel=1e-5)
    assert loss.soft.item() == pytest.approx(t * t * kl, rel=1e-5)
    assert loss.total.item() == pytest.approx(alpha * ce + (1 - alpha) * t * t * kl, rel=1e-5)
    same = distillation_loss(teacher_logits, teacher_logits, labels, alpha=0.0, temperature=t)
    assert same.total.item() == pytest.approx(0.0, abs=1e-6)  # a student equal to its teacher has nothing to learn


def test_hidden_state_loss_ignores_padding() -> None:
    student_hidden = (torch.zeros(1, 3, 2), torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]]))
    teacher_hidden = (torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 3, 2))
    projection = nn.Identity()
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: its huge error must not count
    loss = hidden_state_loss(student_hidden, teacher_hidden, {1: 2}, projection, mask)
    assert loss.item() == pytest.approx((0 + 1 + 4 + 9) / 4)


def test_presets_literal_matches_encoder_presets() -> None:
    assert set(PresetName.__args__) == set(PRESETS)  # type: ignore[attr-defined]


def test_student_checkpoint_has_no_teacher_and_loads_back(teacher_dir: Path, tmp_path: Path) -> None:
    L.seed_everything(1)
    dm = datamodule(teacher_dir / "cache")
    model = student(teacher_dir, dm, learning_rate=3e-3)
    fit = trainer(tmp_path, max_epochs=2)
    fit.fit(model, datamodule=dm)
    assert 0 < fit.callback_metrics["train_soft_loss"].item() < 10
    path = tmp_path / "student.ckpt"
    fit.save_checkpoint(path)

    checkpoint = torch.load(path, weights_only=True)
    keys = list(checkpoint["state_dict"])
    assert keys and all(key.startswith("model.") for key in keys), [k for k in keys if not k.startswith("model.")]
    teacher_params = sum(p.numel() for p in load_teacher(teacher_dir / "teacher.ckpt").model.parameters())
    assert sum(t.numel() for t in checkpoint["state_dict"].values()) < teacher_params
    vocab = checkpoint["pocketbert"]["vocab"]
    assert 100 < len(vocab) < 21128 and vocab[0] == "[PAD]"  # pruned to the slice's tokens
    assert checkpoint["state_dict"]["model.bert.embeddings.word_embeddings.weight"].shape[0] == len(vocab)

    model.eval()
    texts = dm.texts["test"][:12]
    exportable = load_exportable(path)
    assert exportable.vocab == vocab and exportable.label_names == LABELS
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(encoded["input_ids"], encoded["attention_mask"])
        shipped = exportable.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        assert torch.allclose(shipped, expected, atol=1e-5)
        for teacher_path in (teacher_dir / "teacher.ckpt", None):
            reloaded = DistillationModule.load_from_checkpoint(path, weights_only=True, teacher_checkpoint=teacher_path)
            assert reloaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
            assert torch.allclose(reloaded.eval()(encoded["input_ids"], encoded["attention_mask"]), expected,
                                  atol=1e-5)
    # The module's own test run tokenizes as the shipped model does: same predictions as exportable + pruned vocab.
    outputs: list[dict[str, torch.Tensor]] = fit.predict(model, datamodule=dm)  # type: ignore[assignment]
    predictions = torch.cat([output["predictions"] for output in outputs])
    encoded = exportable_inputs(vocab, dm.texts["test"])
    with torch.no_grad():
        shipped_predictions = exportable.model(**encoded).logits.argmax(-1)
    assert torch.equal(predictions, shipped_predictions)

    # Resuming training from the checkpoint (as `--ckpt_path last` does) prunes the same way and loads the weights.
    resumed = student(teacher_dir, dm, learning_rate=3e-3)
    again = trainer(tmp_path, max_epochs=3)
    again.fit(resumed, datamodule=dm, ckpt_path=path, weights_only=True)
    assert again.current_epoch == 3 and resumed.tokenizer.get_vocab() == model.tokenizer.get_vocab()


def exportable_inputs(vocab: list[str], texts: list[str]) -> dict[str, torch.Tensor]:
    """What an app does: a WordPiece tokenizer over the shipped vocabulary, nothing from training."""
    from collections import OrderedDict

    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=OrderedDict((token, i) for i, token in enumerate(vocab)))
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def test_vocab_pruning_preserves_predictions(cache_dir: Path) -> None:
    dm = datamodule(cache_dir, per_class=30)
    dm.setup()
    L.seed_everything(0)
    model = TextClassifier(label_names=dm.label_names, tokenizer=dm.tokenizer_path, architecture=STUDENT).model.eval()
    train_ids = dm.datasets["train"].tokens.ids
    pruned = PrunedVocab.from_training_ids(dm.tokenizer, train_ids)
    # Training texts tokenize with the pruned vocabulary exactly as with the full one, remapped.
    texts = dm.texts["train"]
    assert tokenize(texts, pruned.tokenizer, 128, None).ids.tolist() == pruned.id_map[train_ids.long()].tolist()
    encoded = dm.tokenizer(texts[:16], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        pruned.prune_embeddings(model)
        after = model(input_ids=pruned.id_map[encoded["input_ids"]], attention_mask=encoded["attention_mask"]).logits
    assert model.config.vocab_size == len(pruned.tokens) < 2000
    assert torch.allclose(before, after, atol=1e-6)


def test_changing_the_teacher_or_the_data_invalidates_the_cache(teacher_dir: Path, tmp_path: Path) -> None:
    teacher = load_teacher(teacher_dir / "teacher.ckpt")
    texts = ["中国队夺冠", "新款轿车上市", "科学家发现新物种"]
    tokens = tokenize(texts, teacher.tokenizer, teacher.max_length, None)
    cache = tmp_path / "cache"
    first, hit = cached_teacher_logits(teacher, texts, tokens, cache, device=torch.device("cpu"))
    assert not hit and len(list(cache.glob("teacher-logits-*.pt"))) == 1
    again, hit = cached_teacher_logits(teacher, texts, tokens, cache, device=torch.device("cpu"))
    assert hit and torch.equal(first, again)
    with torch.no_grad():
        direct = teacher.model(**teacher.tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert torch.allclose(first, direct, atol=1e-5)

    retrained = torch.load(teacher_dir / "teacher.ckpt", weights_only=True)  # same shape, labels and vocab ...
    retrained["state_dict"]["model.classifier.bias"] += torch.tensor([0.5, -0.5, 0.0])  # ... other weights
    torch.save(retrained, tmp_path / "retrained.ckpt")
    other = load_teacher(tmp_path / "retrained.ckpt")
    assert other.fingerprint != teacher.fingerprint
    third, hit = cached_teacher_logits(other, texts, tokens, cache, device=torch.device("cpu"))
    assert not hit and not torch.allclose(third, first)
    _, hit = cached_teacher_logits(teacher, texts[:2], tokenize(texts[:2], teacher.tokenizer, 128, None), cache,
                                   device=torch.device("cpu"))
    assert not hit  # other texts


def test_cached_and_uncached_teacher_give_the_same_loss(teacher_dir: Path, tmp_path: Path) -> None:
    dm = datamodule(teacher_dir / "cache")
    losses = []
    for use_cache in (True, False):
        L.seed_everything(3)
        model = student(teacher_dir, dm, teacher_cache=use_cache)
        fit = trainer(tmp_path, max_steps=1, limit_val_batches=0)
        fit.fit(model, datamodule=dm)
        losses.append(fit.callback_metrics["train_loss"].item())
        assert (model._teacher_logits is not None) == use_cache
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


class StepLosses(L.Callback):
    """The hidden-state loss logged at every training step."""

    def __init__(self) -> None:
        self.hidden: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        self.hidden.append(float(trainer.callback_metrics["train_hidden_loss"]))


def test_hidden_state_matching_trains(teacher_dir: Path, tmp_path: Path) -> None:
    L.seed_everything(4)
    dm = datamodule(teacher_dir / "cache", per_class=20)
    model = student(teacher_dir, dm, layer_map={0: 0, 1: 2}, hidden_weight=0.5, learning_rate=3e-3)
    assert model.hidden_projection is not None and model.hidden_projection.out_features == TEACHER.hidden_size
    losses = StepLosses()
    fit = trainer(tmp_path, max_epochs=4, callbacks=[losses])
    fit.fit(model, datamodule=dm)
    assert len(losses.hidden) == 4 * 3  # 42 training rows in batches of 16
    # the student's projected hidden states move towards the teacher's (measured: 1.32 at the first steps, 0.82 at
    # the last ones)
    assert max(losses.hidden[-3:]) < 0.8 * min(losses.hidden[:3]), losses.hidden
    assert not any(key.startswith("teacher") for key in model.state_dict())
    with pytest.raises(PocketbertError, match="layer_map 2: 9 is out of range"):
        student(teacher_dir, dm, layer_map={2: 9})


def test_bad_arguments_fail_with_one_line(teacher_dir: Path, tmp_path: Path) -> None:
    dm = datamodule(teacher_dir / "cache", labels=NEWS16[3:6])
    with pytest.raises(PocketbertError, match=r"trained on labels \['baby', 'car', 'discovery'\] but the data has"):
        student(teacher_dir, dm)
    missing = tmp_path / "tb_logs" / "news16_cpu" / "latest" / "best.ckpt"
    without_teacher = DistillationModule(teacher_checkpoint=missing, label_names=NEWS16[3:6],
                                         tokenizer=dm.tokenizer_path, preset="tiny")  # testing would need no teacher
    with pytest.raises(PocketbertError, match=r"not found: train the teacher first \(python -m recipes fit --config "
                                              r"news16_cpu\.yaml\)"):
        trainer(tmp_path).fit(without_teacher, datamodule=dm)  # fitting does
    with pytest.raises(PocketbertError, match="exactly one of"):
        student(teacher_dir, dm, preset="tiny")
    with pytest.raises(PocketbertError, match="alpha must be in"):
        student(teacher_dir, dm, alpha=1.5)


def test_same_seed_gives_the_student_the_same_init_as_a_plain_classifier(teacher_dir: Path, vocab_file: Path) -> None:
    """So the benchmark's 'alone' and 'distilled' students start from the same weights: loading the teacher
    must not consume the random stream."""
    L.seed_everything(5)
    plain = TextClassifier(label_names=LABELS, tokenizer=str(vocab_file), architecture=STUDENT)
    L.seed_everything(5)
    distilled = DistillationModule(teacher_checkpoint=teacher_dir / "teacher.ckpt", label_names=LABELS,
                                   tokenizer=str(vocab_file), architecture=STUDENT, prune_vocab=False)
    expected = plain.model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in distilled.model.state_dict().items())


def test_resuming_a_student_after_its_teacher_changed_stops_and_evaluation_needs_no_teacher(
        teacher_dir: Path, tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.ckpt"  # what tb_logs/<teacher>/latest/best.ckpt would point at
    shutil.copy(teacher_dir / "teacher.ckpt", teacher)
    dm = datamodule(teacher_dir / "cache")
    L.seed_everything(2)
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(student(tmp_path, dm, learning_rate=3e-3), datamodule=dm)
    path = tmp_path / "student.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["pocketbert"]["distillation"]
    assert saved["teacher_fingerprints"] == [load_teacher(teacher).fingerprint]

    retrained = torch.load(teacher, weights_only=True)  # the teacher recipe ran again: same file, other weights
    retrained["state_dict"]["model.classifier.bias"] += torch.tensor([0.5, -0.5, 0.0])
    torch.save(retrained, teacher)
    with pytest.raises(PocketbertError, match=r"the teacher changed since this student checkpoint was written "
                                              r"\(distilled from .*teacher\.ckpt, fingerprint [0-9a-f]{12}; now "
                                              r"[0-9a-f]{12}\); resume with the teacher it was distilled from"):
        trainer(tmp_path, max_epochs=2).fit(student(tmp_path, dm), datamodule=dm, ckpt_path=path, weights_only=True)

    # testing and predicting a trained student need no teacher file (its hyperparameters still name it)
    expected = trainer(tmp_path).test(DistillationModule.load_from_checkpoint(
        path, weights_only=True, teacher_checkpoint=None), datamodule=dm, verbose=False)[0]
    teacher.unlink()
    reloaded = DistillationModule.load_from_checkpoint(path, weights_only=True)
    assert reloaded.hparams["teacher_checkpoint"] == teacher and reloaded.teacher is None
    assert trainer(tmp_path).test(reloaded, datamodule=dm, verbose=False)[0] == expected
    assert len(torch.cat([o["predictions"] for o in trainer(tmp_path).predict(reloaded, datamodule=dm)])) == len(
        dm.texts["test"])
