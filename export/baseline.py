"""The linear baseline every model is compared with: TF-IDF character n-grams + a linear SVM (scikit-learn).

On short Chinese headlines this two-second model is strong (news16 0.774, THUCNews-10 0.909 test accuracy), so the
benchmark shows it beside every exported variant, and distillation can use it as a teacher: cross-fitted, so that
no training row is labelled by a model that saw it (:func:`cross_fitted_decisions`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.evaluation import accuracy_and_macro_f1

BASELINE = "baseline"  # the variant name of the linear baseline row in benchmark tables


@dataclass
class TfidfSettings:
    """TF-IDF character n-grams + ``LinearSVC``.

    Args:
        ngram_min: Shortest character n-gram.
        ngram_max: Longest character n-gram.
        C: Inverse regularization strength of the linear SVM.
        sublinear_tf: ``1 + log(tf)`` term frequencies.
        nb_scaled: An NB-SVM (:class:`NbSvmClassifier`) instead of the plain SVM.
    """

    ngram_min: int = 1
    ngram_max: int = 2
    C: float = 0.5
    sublinear_tf: bool = True
    nb_scaled: bool = False

    def describe(self) -> str:
        model = "NB-SVM" if self.nb_scaled else "LinearSVC"
        return f"TF-IDF char {self.ngram_min}-{self.ngram_max}-grams + {model}(C={self.C})"


def nb_log_count_ratio(present: Any, mine: np.ndarray) -> np.ndarray:
    """NB-SVM's per-feature scale for one class (Wang and Manning, 2012): ``log((p / |p|) / (q / |q|))``, ``p`` (``q``)
    the add-one counts of the texts of (not of) the class that have each feature. ``present``: (texts, features) sparse
    0/1, ``mine``: (texts,) bool."""
    p = np.asarray(present[mine].sum(axis=0)).ravel() + 1.0
    q = np.asarray(present[~mine].sum(axis=0)).ravel() + 1.0
    return np.asarray(np.log((p / p.sum()) / (q / q.sum())))


class NbSvmClassifier:
    """NB-SVM (Wang and Manning, 2012), one-vs-rest: for class ``c`` the features are scaled by their
    :func:`nb_log_count_ratio` and a binary ``LinearSVC(C)`` is fitted on them; ``coef_`` folds the ratio back in, so
    scores are ``features @ coef_.T + intercept_``. On news16 it scores 0.784 where the plain SVM over the same TF-IDF
    scores 0.774.

    Args:
        C: Inverse regularization strength of each binary SVM.
        nb_scaled: Scale by the log-count ratio (off: a plain one-vs-rest SVM, fitted the same way).
    """

    def __init__(self, C: float = 0.5, nb_scaled: bool = True) -> None:
        self.C, self.nb_scaled = C, nb_scaled
        self.coef_ = np.zeros((0, 0))
        self.intercept_ = np.zeros(0)

    def fit(self, features: Any, labels: np.ndarray, num_labels: int | None = None) -> NbSvmClassifier:
        """``features``: (texts, features) sparse, non-negative; ``labels``: (texts,) ids below ``num_labels``
        (default: the largest id + 1). A class without training texts (or with all of them) gets no weights and a low
        intercept."""
        from sklearn.svm import LinearSVC

        present = (features > 0).astype(np.float64).tocsr()
        num_labels = int(labels.max()) + 1 if num_labels is None else num_labels
        self.coef_ = np.zeros((num_labels, features.shape[1]))
        self.intercept_ = np.full(num_labels, -1.0)
        for label in range(num_labels):
            mine = labels == label
            if not mine.any() or mine.all():
                continue
            ratio = nb_log_count_ratio(present, mine) if self.nb_scaled else np.ones(features.shape[1])
            svm = LinearSVC(C=self.C, random_state=0).fit(features.multiply(ratio).tocsr(), mine.astype(int))
            self.coef_[label], self.intercept_[label] = svm.coef_[0] * ratio, svm.intercept_[0]
        return self

    def decision_function(self, features: Any) -> np.ndarray:
        return np.asarray(features @ self.coef_.T) + self.intercept_


@dataclass
class NaiveBayesSettings:
    """Character n-gram counts + Complement Naive Bayes: weaker alone than the SVM, but its errors differ, so the
    two together make a better teacher than either (news16 0.783 against 0.774 for the SVM alone).

    Args:
        ngram_min: Shortest character n-gram.
        ngram_max: Longest character n-gram.
        alpha: Additive (Laplace/Lidstone) smoothing.
    """

    ngram_min: int = 1
    ngram_max: int = 3
    alpha: float = 0.3

    def describe(self) -> str:
        return f"char {self.ngram_min}-{self.ngram_max}-gram counts + ComplementNB(alpha={self.alpha})"


LinearSettings = TfidfSettings | NaiveBayesSettings


@dataclass
class LinearBaseline:
    vectorizer: Any  # sklearn TfidfVectorizer / CountVectorizer
    classifier: Any  # sklearn LinearSVC / ComplementNB
    settings: LinearSettings

    def decisions(self, texts: list[str]) -> np.ndarray:
        """Scores (n, num_labels) used as (uncalibrated) logits: the SVM's margins, or Naive Bayes log-probabilities."""
        features = self.vectorizer.transform(texts)
        scores = (self.classifier.decision_function(features) if isinstance(self.settings, TfidfSettings)
                  else self.classifier.predict_log_proba(features))
        return np.asarray(scores, dtype=np.float32).reshape(len(texts), -1)

    @property
    def weights(self) -> np.ndarray:
        """The (num_labels, features) matrix an app would ship."""
        return np.asarray(self.classifier.coef_ if isinstance(self.settings, TfidfSettings)
                          else self.classifier.feature_log_prob_)

    @property
    def shipped_bytes(self) -> int:
        """What an app would download: the n-gram vocabulary (UTF-8, a line each), IDF weights when used, and the
        weight matrix and biases in float32."""
        grams = sum(len(gram.encode("utf-8")) + 1 for gram in self.vectorizer.vocabulary_)
        idf = len(getattr(self.vectorizer, "idf_", []))
        return grams + 4 * (idf + self.weights.size + self.weights.shape[0])


def fit_baseline(texts: list[str], labels: list[int], num_labels: int,
                 settings: LinearSettings | None = None) -> LinearBaseline:
    """Fit on ``texts`` (already normalized as the model sees them) and integer ``labels`` in ``range(num_labels)``."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.naive_bayes import ComplementNB
    from sklearn.svm import LinearSVC

    settings = settings or TfidfSettings()
    present = sorted(set(labels))
    if present != list(range(num_labels)):
        missing = sorted(set(range(num_labels)) - set(present))
        raise ExportError(f"the baseline's training labels miss classes {missing}; every class needs training rows")
    ngrams = (settings.ngram_min, settings.ngram_max)
    if isinstance(settings, TfidfSettings):
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=ngrams, sublinear_tf=settings.sublinear_tf,
                                     dtype=np.float32)
        features = vectorizer.fit_transform(texts)
        classifier = NbSvmClassifier(settings.C) if settings.nb_scaled else LinearSVC(C=settings.C)
        return LinearBaseline(vectorizer, classifier.fit(features, np.asarray(labels)), settings)
    vectorizer = CountVectorizer(analyzer="char", ngram_range=ngrams, dtype=np.float32)
    features = vectorizer.fit_transform(texts)
    return LinearBaseline(vectorizer, ComplementNB(alpha=settings.alpha).fit(features, np.asarray(labels)), settings)


def cross_fitted_decisions(texts: list[str], labels: list[int], num_labels: int, *, folds: int = 5, seed: int = 0,
                           settings: LinearSettings | None = None) -> np.ndarray:
    """Out-of-fold decision values (n, num_labels): row i comes from a model fitted on the other folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2:
        raise ExportError(f"cross-fitting needs at least 2 folds, got {folds}")
    y = np.asarray(labels)
    smallest = min(Counter(labels).values())
    # stratify when every class can appear in every fold; a rarer class falls back to plain shuffled folds
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if smallest >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    decisions = np.zeros((len(texts), num_labels), dtype=np.float32)
    for fit_rows, held_rows in splitter.split(texts, y):
        fit_labels = y[fit_rows]
        model = fit_baseline([texts[i] for i in fit_rows], fit_labels.tolist(), num_labels, settings)
        decisions[held_rows] = model.decisions([texts[i] for i in held_rows])
    return decisions


def baseline_row(train_texts: list[str], train_labels: list[int], test_texts: list[str], test_labels: list[int],
                 num_labels: int, settings: TfidfSettings | None = None) -> dict[str, Any]:
    """The benchmark's baseline row: fitted on the train split, scored on the test split."""
    start = time.perf_counter()
    model = fit_baseline(train_texts, train_labels, num_labels, settings)
    fit_seconds = time.perf_counter() - start
    figures = accuracy_and_macro_f1(model.decisions(test_texts), test_labels, num_labels)
    return {"variant": BASELINE, "format": "sklearn", "model": model.settings.describe(),
            "size_mb": model.shipped_bytes / 1e6, "parameters": int(model.weights.size + model.weights.shape[0]),
            "features": int(model.weights.shape[1]), "fit_seconds": fit_seconds, "train_examples": len(train_texts),
            "settings": asdict(model.settings), **figures}


def baseline_of(variants: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline row among a benchmark's ``variants`` (None when it has none: an export context without training
    texts, or a run benchmarked before the baseline row existed)."""
    return next((row for row in variants if row.get("variant") == BASELINE), None)


def read_baseline(export_dir: Path) -> dict[str, Any] | None:
    """The baseline row of ``export_dir/benchmark.json`` (None without the file or the row)."""
    benchmark = export_dir / "benchmark.json"
    if not benchmark.is_file():
        return None
    return baseline_of(json.loads(benchmark.read_text("utf-8")).get("variants", []))


def lead_points(accuracy: float | None, baseline: dict[str, Any] | None) -> float | None:
    """By how many accuracy points ``accuracy`` leads the baseline row (negative: trails it); None when either is
    missing, so that an old run's table shows "-" instead of failing."""
    if accuracy is None or baseline is None or baseline.get("accuracy") is None:
        return None
    return 100 * (accuracy - baseline["accuracy"])


def lead_cell(points: float | None) -> str:
    """A Markdown cell for :func:`lead_points`: signed, two decimals, "-" when not measured."""
    return "-" if points is None else f"{points:+.2f}"
