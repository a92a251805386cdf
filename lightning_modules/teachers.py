"""Teachers of any kind for distillation: pocketbert checkpoints, a cross-fitted TF-IDF linear model, or your own.

A teacher is anything with the :class:`LogitTeacher` shape: a ``weight``, whether to ``calibrate`` it, and logits for
the texts of every split.
A teacher that learns from the training split (the TF-IDF model) must label each training row with a model that did
not see it (k-fold cross-fitting); otherwise its soft labels would just repeat the hard ones. Several teachers form
an ensemble: the targets are the weighted mean of their log-probabilities, after scaling the outputs of teachers that
are not already logits (an SVM's margins) by one temperature fitted on the validation split (negative
log-likelihood). Every teacher's logits are cached on disk under a key
that covers the teacher and the texts (and labels, for a teacher that learns from them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from lightning.pytorch.utilities import rank_zero_info

from export.baseline import LinearSettings, NaiveBayesSettings, TfidfSettings, cross_fitted_decisions, fit_baseline
from lightning_modules.errors import PocketbertError
from lightning_modules.teacher_cache import Teacher, cached_teacher_logits, load_teacher
from lightning_modules.token_cache import atomic_torch_save, texts_fingerprint, tokenize

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class TeacherData:
    """What teachers see: the texts of every split, the training labels, and where to cache."""

    texts: dict[str, list[str]]  # train / val / test, as the DataModule normalized them
    labels: dict[str, torch.Tensor]  # split -> label ids (n,); a teacher may learn from "train" only
    label_names: list[str]
    cache_dir: Path | None
    device: torch.device


@runtime_checkable
class LogitTeacher(Protocol):
    """The contract of a distillation teacher (``model.init_args.teachers`` entries)."""

    weight: float
    calibrate: bool  # fit a temperature to its outputs on the validation split before combining

    def describe(self) -> str:
        """A short human-readable name for reports."""
        ...

    def split_logits(self, data: TeacherData) -> dict[str, torch.Tensor]:
        """Logits (n, num_labels), float32 on CPU, for every split in ``data.texts``; training rows must come from
        a model that did not train on them."""
        ...


class CheckpointTeacher:
    """A trained pocketbert classifier (a ``best.ckpt``), run over every split once; its logits are cached.

    Args:
        checkpoint: The checkpoint, e.g. ``tb_logs/news16_cpu/latest/best.ckpt``.
        weight: Its weight in the ensemble.
        calibrate: Rescale its logits by a temperature fitted on the validation split (off: a classifier trained
            with cross-entropy already outputs logits; on softens an over-confident one).
        batch_size: Batch size of its forward passes.
    """

    def __init__(self, checkpoint: Path, weight: float = 1.0, calibrate: bool = False, batch_size: int = 128) -> None:
        check_weight(weight)
        self.checkpoint = Path(checkpoint)
        self.weight = weight
        self.calibrate = calibrate
        self.batch_size = batch_size
        self._teacher: Teacher | None = None

    @property
    def teacher(self) -> Teacher:
        if self._teacher is None:
            with torch.random.fork_rng(devices=[]):  # loading must not shift the student's random init
                self._teacher = load_teacher(self.checkpoint)
        return self._teacher

    @classmethod
    def of(cls, teacher: Teacher, weight: float = 1.0, batch_size: int = 128) -> CheckpointTeacher:
        """A teacher already loaded (``DistillationModule``'s ``teacher_checkpoint``)."""
        made = cls(teacher.path, weight, batch_size=batch_size)
        made._teacher = teacher
        return made

    def describe(self) -> str:
        return f"checkpoint {self.checkpoint}"

    def split_logits(self, data: TeacherData) -> dict[str, torch.Tensor]:
        teacher = self.teacher
        if teacher.label_names != data.label_names:
            raise PocketbertError(f"the teacher {self.checkpoint} was trained on labels {teacher.label_names} but the "
                                  f"data has {data.label_names}; give the data the teacher's label list "
                                  "(data.init_args.labels) or train a matching teacher")
        logits = {}
        for split, texts in data.texts.items():
            tokens = tokenize(texts, teacher.tokenizer, teacher.max_length, data.cache_dir,
                              desc=f"tokenizing {split} for the teacher")
            logits[split], from_cache = cached_teacher_logits(teacher, texts, tokens, data.cache_dir,
                                                              device=data.device, batch_size=self.batch_size)
            source = "from cache" if from_cache else "computed"
            rank_zero_info(f"teacher logits for {len(texts)} {split} texts {source}")
        return logits


class TfidfTeacher:
    """The linear baseline as a teacher: TF-IDF character n-grams + a linear SVM, cross-fitted on the training split
    (each training row is labelled by the model of the ``folds - 1`` folds without it); val and test rows by a model
    fitted on the whole training split. Its decision values are margins, not logits: the ensemble calibrates their
    scale on the validation split.

    Args:
        folds: Cross-fitting folds (no training row is labelled by a model that trained on it).
        weight: Its weight in the ensemble.
        ngram_max: Longest character n-gram.
        C: Inverse regularization strength of the SVM.
        seed: Seed of the fold assignment.
        nb_scaled: An NB-SVM instead of the plain SVM (each class's features scaled by their Naive Bayes log-count
            ratio; ``export.baseline.NbSvmClassifier``): news16 test 0.784 against 0.774, and beside the plain SVM and
            the Naive Bayes teacher it makes the ensemble the recipes ship (0.790).
    """

    def __init__(self, folds: int = 5, weight: float = 1.0, ngram_max: int = 2, C: float = 0.5, seed: int = 0,
                 nb_scaled: bool = False) -> None:
        check_linear(folds, weight, ngram_max)
        if C <= 0:
            raise PocketbertError(f"TfidfTeacher needs C > 0, got {C}")
        self.folds, self.weight, self.seed = folds, weight, seed
        self.calibrate = True
        self.settings: LinearSettings = TfidfSettings(ngram_max=ngram_max, C=C, nb_scaled=nb_scaled)

    def describe(self) -> str:
        return f"{self.settings.describe()}, {self.folds}-fold cross-fitted"

    def split_logits(self, data: TeacherData) -> dict[str, torch.Tensor]:
        return cross_fitted_logits(self.settings, self.folds, self.seed, data, self.describe())


class NaiveBayesTeacher:
    """Character n-gram counts + Complement Naive Bayes, cross-fitted like :class:`TfidfTeacher`. Weaker alone, but
    beside the TF-IDF teacher it lifts the ensemble (news16 test: SVM 0.774, with Naive Bayes 0.783): their errors
    differ. Its log-probabilities are over-confident; the ensemble calibrates their scale on the validation split.

    Args:
        folds: Cross-fitting folds (no training row is labelled by a model that trained on it).
        weight: Its weight in the ensemble.
        ngram_max: Longest character n-gram.
        alpha: Additive smoothing of the n-gram counts.
        seed: Seed of the fold assignment.
    """

    def __init__(self, folds: int = 5, weight: float = 1.0, ngram_max: int = 3, alpha: float = 0.3,
                 seed: int = 0) -> None:
        check_linear(folds, weight, ngram_max)
        if alpha <= 0:
            raise PocketbertError(f"NaiveBayesTeacher needs alpha > 0, got {alpha}")
        self.folds, self.weight, self.seed = folds, weight, seed
        self.calibrate = True
        self.settings: LinearSettings = NaiveBayesSettings(ngram_max=ngram_max, alpha=alpha)

    def describe(self) -> str:
        return f"{self.settings.describe()}, {self.folds}-fold cross-fitted"

    def split_logits(self, data: TeacherData) -> dict[str, torch.Tensor]:
        return cross_fitted_logits(self.settings, self.folds, self.seed, data, self.describe())


def cross_fitted_logits(settings: LinearSettings, folds: int, seed: int, data: TeacherData,
                        name: str) -> dict[str, torch.Tensor]:
    """A linear teacher's scores: out-of-fold on the training split, from the whole-split model elsewhere (cached)."""
    train_labels = data.labels["train"].tolist()
    key = _digest([name, seed, data.label_names, train_labels,
                   {split: texts_fingerprint(texts) for split, texts in data.texts.items()}])
    cached = _load(data.cache_dir, key)
    if cached is not None:
        return cached
    num_labels = len(data.label_names)
    logits = {"train": torch.from_numpy(cross_fitted_decisions(
        data.texts["train"], train_labels, num_labels, folds=folds, seed=seed, settings=settings))}
    model = fit_baseline(data.texts["train"], train_labels, num_labels, settings)
    for split in data.texts.keys() - {"train"}:
        logits[split] = torch.from_numpy(model.decisions(data.texts[split]))
    _save(data.cache_dir, key, logits)
    return logits


def check_linear(folds: int, weight: float, ngram_max: int) -> None:
    check_weight(weight)
    if folds < 2:
        raise PocketbertError(f"a linear teacher needs folds >= 2 (cross-fitting), got {folds}")
    if ngram_max < 1:
        raise PocketbertError(f"a linear teacher needs ngram_max >= 1, got {ngram_max}")


def check_weight(weight: float) -> None:
    if not weight > 0 or math.isinf(weight):
        raise PocketbertError(f"a teacher's weight must be a positive number, got {weight}")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The scale ``s`` minimizing the negative log-likelihood of ``softmax(s * logits)``: (n, C), (n,) -> float."""
    logits, labels = logits.double(), labels.long()

    def nll(log_scale: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits * math.exp(log_scale), labels))

    low, high = math.log(1e-3), math.log(1e3)  # golden-section search: the NLL is unimodal in log(s)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)


@dataclass
class EnsembleTargets:
    logits: dict[str, torch.Tensor]  # split -> (n, C) weighted mean of calibrated log-probabilities
    report: dict[str, Any]  # per teacher and for the ensemble: weight, scale, val/test accuracy


def ensemble_targets(teachers: list[LogitTeacher], data: TeacherData) -> EnsembleTargets:
    """Every teacher's logits (cached), calibrated on the validation split when it asks to be, combined by weight."""
    if not teachers:
        raise PocketbertError("distillation needs a teacher: set model.init_args.teacher_checkpoint or teachers")
    total = sum(teacher.weight for teacher in teachers)
    combined: dict[str, torch.Tensor] = {}
    members = []
    for teacher in teachers:
        logits = teacher.split_logits(data)
        for split in SPLITS:
            if split in data.texts and tuple(logits[split].shape) != (len(data.texts[split]), len(data.label_names)):
                raise PocketbertError(f"teacher {teacher.describe()} gave {split} logits of shape "
                                      f"{tuple(logits[split].shape)} for {len(data.texts[split])} texts and "
                                      f"{len(data.label_names)} labels")
        scale = fit_temperature(logits["val"], data.labels["val"]) if teacher.calibrate and "val" in logits else 1.0
        members.append({"teacher": teacher.describe(), "weight": teacher.weight, "scale": scale,
                        **_accuracies(logits, data)})
        for split, values in logits.items():
            contribution = (teacher.weight / total) * torch.log_softmax(values.float() * scale, dim=-1)
            combined[split] = combined[split] + contribution if split in combined else contribution
    report = {"teachers": members, "ensemble": _accuracies(combined, data)}
    return EnsembleTargets(combined, report)


def teacher_summary(report: dict[str, Any]) -> str:
    """Log lines: each teacher's and the ensemble's validation/test accuracy."""
    lines = [f"teacher {member['teacher']} (weight {member['weight']:g}, scale {member['scale']:.3g}): "
             + ", ".join(f"{k} {v:.4f}" for k, v in member.items() if k.endswith("_acc"))
             for member in report["teachers"]]
    if len(report["teachers"]) > 1:
        lines.append("teacher ensemble: " + ", ".join(f"{k} {v:.4f}" for k, v in report["ensemble"].items()))
    return "\n".join(lines)


def _accuracies(logits: dict[str, torch.Tensor], data: TeacherData) -> dict[str, float]:
    """Accuracy of the logits on every labelled split; ``train_acc`` is what the student learns from: out of fold for
    a cross-fitted teacher (more folds, closer to the whole-split model), in-sample for a checkpoint."""
    return {f"{split}_acc": float((logits[split].argmax(-1) == data.labels[split]).float().mean())
            for split in SPLITS if split in logits and split in data.labels}


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:24]


def _load(cache_dir: Path | None, key: str) -> dict[str, torch.Tensor] | None:
    path = cache_dir / f"teacher-logits-{key}.pt" if cache_dir is not None else None
    if path is None or not path.exists():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return {split: tensor for split, tensor in stored["logits"].items()}
    except Exception as err:  # a corrupt cache entry is recomputed, never trusted
        log.warning("ignoring unreadable teacher-logit cache %s (%s)", path, err)
        return None


def _save(cache_dir: Path | None, key: str, logits: dict[str, torch.Tensor]) -> None:
    if cache_dir is not None:
        atomic_torch_save({"logits": logits}, cache_dir / f"teacher-logits-{key}.pt")
