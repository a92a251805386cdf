"""The student's linear companion: linear models over the student's own features, fitted after training.

On short headlines a linear model over character n-grams is hard to beat, and a small transformer distilled from it
stays about a point behind while making partly different mistakes. ``export.ngram_bert.LinearCompanion`` puts such a
model inside the student's graph (over the token ids and n-gram rows the student already computes, so apps feed the same
WordPiece ids), and the classifier adds its scores times one weight. The linear model is fitted here on the training
split once the transformer is trained: a ``LinearSVC`` on the TF-IDF features, plain or as an NB-SVM (Wang and Manning,
2012: per class, the features scaled by their Naive Bayes log-count ratio), alone or plus a ``ComplementNB`` on the same
features, each scaled by the temperature that calibrates it on validation. A sum of linear models is one linear model,
so the graph and its size do not change. The NB-SVM wins on large corpora (news16: the pair scores 0.781 over the
student's features), the plain SVM on small ones (NB ratios from a few hundred texts a class are noise), and the Naive
Bayes member adds 0.3-1.8 points to either below 20,000 texts (measured in docs/quality.md) but can hurt (3 classes of
60 headlines: it scores 0.48 on validation, the NB-SVM 0.81). Each candidate's weight is the one of the best validation
accuracy of the student plus the companion (weight 0 is on the grid, so a companion that does not help is switched
off). Which candidate ships depends on the size of the validation split. From ``MIN_VALIDATION_ROWS_TO_CHOOSE`` rows,
the best validation accuracy of the sum chooses: validation sees how a linear model's errors overlap the transformer's
(a student distilled from a plain SVM teacher gains more from an NB-SVM, which cross-validates worse alone: news16 two
seeds, 0.3 and 0.4 points of test accuracy; THUCNews titles at 14,000 rows 0.5). Below it, one of 12 linear models x
26 weights chosen on a few hundred rows is noise (THUCNews titles, 150 a class, 300 validation rows, three samples:
0.6-2.0 points of test accuracy below the alternative), so the linear model of the best 5-fold cross-validated accuracy
on the training split ships (every training row, no student needed: each linear model is scored alone) at its
validation weight. No test text is read.

Two features are left out (idf 0: no weight, no share of a text's norm), as the baseline leaves out what its training
texts lack: [UNK] (characters the pruned vocabulary dropped) and the one row all bigrams outside the student's
bigram vocabulary share. Trained on 1,500 THUCNews titles, that row was 8% of a training text's features and 29% of a
test text's, and [UNK] was in 4% of the training texts and 34% of the test texts: a shift that shrank every other
feature of a test text. Left out, the SVM alone scored 0.779 on the test titles instead of 0.734 (docs/quality.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from scipy import sparse
from torch import nn
from transformers import PreTrainedModel

from export.baseline import NbSvmClassifier
from export.ngram_bert import HashedNgramEmbedding, LinearCompanion
from lightning_modules.batching import padded_rows
from lightning_modules.errors import PocketbertError
from lightning_modules.teachers import fit_temperature
from lightning_modules.token_cache import TokenizedTexts, atomic_torch_save

# Weights tried for the companion's scores (the student's logits have weight 1); 0 turns it off.
WEIGHT_GRID = (0.0, *np.geomspace(0.25, 64.0, 25).round(4).tolist())
# The SVM's C, chosen with the weight on validation (news16: 0.2 on both seeds measured; 0.05-0.5 within 0.3 points)
SVM_C_GRID = (0.1, 0.2, 0.5)
# Plain SVM or NB-SVM, chosen with C and the weight: each wins at some corpus size (the module docstring).
SvmKind = Literal["svm", "nbsvm"]
SVM_KINDS: tuple[SvmKind, ...] = ("svm", "nbsvm")
# ComplementNB's additive smoothing, as NaiveBayesTeacher's (0.3 and 1.0 within noise on four corpus sizes)
NB_ALPHA = 0.3
# Folds of the cross-validation that chooses the linear model on small corpora (stratified, shuffled, fixed seed)
CV_FOLDS = 5
# From this many validation rows validation chooses the whole companion; below, the linear model is chosen by
# cross-validation on the training split and only its weight on validation (the module docstring says why).
MIN_VALIDATION_ROWS_TO_CHOOSE = 1000


@dataclass
class CompanionReport:
    """What fitting found, on the validation split."""

    weight: float
    student_accuracy: float  # the transformer alone
    companion_accuracy: float  # the linear model alone
    # the linear model alone, CV_FOLDS-fold on the training split; None when validation chose (large enough)
    cross_validated_accuracy: float | None
    combined_accuracy: float  # the shipped sum
    svm_c: float
    svm_kind: str  # "svm" or "nbsvm"
    naive_bayes: bool  # whether the ComplementNB member is in the sum


def companion_of(model: PreTrainedModel) -> tuple[LinearCompanion, HashedNgramEmbedding]:
    companion = getattr(model.base_model, "companion", None)
    ngram = getattr(getattr(model.base_model, "embeddings", None), "ngram", None)
    if not isinstance(companion, LinearCompanion) or not isinstance(ngram, HashedNgramEmbedding):
        raise PocketbertError("the model has no linear companion: build the student with linear_companion: true")
    return companion, ngram


@torch.no_grad()
def feature_counts(model: PreTrainedModel, tokens: TokenizedTexts, remap: Callable[[torch.Tensor], torch.Tensor]
                   | None = None, batch_size: int = 1024) -> sparse.csr_matrix:
    """(texts, vocab + n-gram rows) counts: every real position's token id and n-gram rows, as the companion reads
    them in the graph (``remap`` maps ``tokens`` into the model's ids, e.g. a pruned vocabulary's)."""
    companion, ngram = companion_of(model)
    vocab = companion.token_table.shape[0]
    device = companion.token_table.device
    text_index, feature = [], []
    for start in range(0, len(tokens), batch_size):
        rows = list(range(start, min(start + batch_size, len(tokens))))
        ids, mask = padded_rows(tokens, rows, 0)
        ids = (remap(ids.to(device)) if remap is not None else ids.to(device)).long()
        real = mask.to(device).bool()  # (batch, seq)
        grams = ngram.bucket_ids(ids)  # (batch, seq, orders)
        owner = (torch.arange(len(rows), device=device).unsqueeze(1).expand_as(ids) + start)[real]
        text_index += [owner] * (1 + grams.shape[-1])
        feature += [ids[real]] + [vocab + grams[..., k][real] for k in range(grams.shape[-1])]
    row = torch.cat(text_index).cpu().numpy()
    col = torch.cat(feature).cpu().numpy()
    width = vocab + companion.ngram_table.shape[0]
    return sparse.csr_matrix((np.ones(len(row), dtype=np.float64), (row, col)), shape=(len(tokens), width))


def tfidf(counts: sparse.csr_matrix, idf: np.ndarray) -> sparse.csr_matrix:
    """Counts x idf, each text divided by ``sqrt(sum of count x idf^2)``: exactly what ``LinearCompanion`` computes."""
    norm = np.sqrt(np.asarray(counts @ (idf**2)).ravel())
    norm[norm == 0] = 1.0
    return cast(sparse.csr_matrix, sparse.diags(1.0 / norm) @ counts @ sparse.diags(idf)).tocsr()


@dataclass
class LinearFit:
    """A linear model over TF-IDF features: ``scores = tfidf(counts, idf) @ coef.T + intercept``."""

    coef: np.ndarray  # (num_labels, features)
    intercept: np.ndarray  # (num_labels,)
    idf: np.ndarray  # (features,)
    svm_c: float

    def scores(self, counts: sparse.csr_matrix) -> np.ndarray:
        """(texts, num_labels) scores, as ``LinearCompanion`` computes them in the graph."""
        return np.asarray(tfidf(counts, self.idf) @ self.coef.T) + self.intercept


def smooth_idf(counts: sparse.csr_matrix, ignored: Sequence[int] = ()) -> np.ndarray:
    """scikit-learn's smooth idf of each feature over the texts of ``counts``; 0 for the ``ignored`` columns."""
    idf = np.log((1 + counts.shape[0]) / (1 + np.asarray((counts > 0).sum(axis=0)).ravel())) + 1.0
    idf[list(ignored)] = 0.0
    return idf


def uninformative_columns(model: PreTrainedModel, unknown_id: int) -> list[int]:
    """The feature columns the companion ignores: the token ``unknown_id`` ([UNK] in the model's ids) and, for a
    bigram-vocabulary student, the row every bigram outside its vocabulary shares (the last)."""
    companion, ngram = companion_of(model)
    shared = [companion.token_table.shape[0] + companion.ngram_table.shape[0] - 1] if ngram.vocabulary else []
    return [unknown_id, *shared]


def fit_svm(counts: sparse.csr_matrix, labels: np.ndarray, num_labels: int, svm_c: float,
            kind: SvmKind = "nbsvm", idf: np.ndarray | None = None) -> LinearFit:
    """One-vs-rest ``LinearSVC(C=svm_c)`` on the TF-IDF of ``counts`` (training texts): an NB-SVM for ``nbsvm``
    (:class:`export.baseline.NbSvmClassifier`), a plain SVM for ``svm``. A class without training texts gets no weights
    and a low intercept. ``idf`` defaults to :func:`smooth_idf` of ``counts``."""
    idf = smooth_idf(counts) if idf is None else idf
    classifier = NbSvmClassifier(svm_c, nb_scaled=kind == "nbsvm").fit(tfidf(counts, idf), labels, num_labels)
    return LinearFit(classifier.coef_, classifier.intercept_, idf, svm_c)


def fit_complement_nb(counts: sparse.csr_matrix, labels: np.ndarray, num_labels: int, alpha: float = NB_ALPHA,
                      idf: np.ndarray | None = None) -> LinearFit:
    """``ComplementNB(alpha)`` on the TF-IDF of ``counts``: its joint log-likelihood is linear in the features. Each
    feature's weights are centred over the classes (a per-text constant, so no prediction changes), which keeps the
    int8 table's range to the differences between classes. A class without training texts gets a low intercept.
    ``idf`` defaults to :func:`smooth_idf` of ``counts``."""
    from sklearn.naive_bayes import ComplementNB

    idf = smooth_idf(counts) if idf is None else idf
    nb = ComplementNB(alpha=alpha).fit(tfidf(counts, idf), labels)
    coef = np.zeros((num_labels, counts.shape[1]))
    coef[nb.classes_] = nb.feature_log_prob_ - nb.feature_log_prob_.mean(axis=0)
    intercept = np.full(num_labels, -10.0)
    intercept[nb.classes_] = 0.0
    return LinearFit(coef, intercept, idf, svm_c=float("nan"))


def calibrated_sum(members: list[LinearFit], val_counts: sparse.csr_matrix, val_labels: torch.Tensor,
                   svm_c: float) -> LinearFit:
    """One linear model: the sum of ``members`` (fitted on the same texts), each times the temperature that
    calibrates its scores on validation, as the teacher ensemble weighs its members."""
    coef, intercept = np.zeros_like(members[0].coef), np.zeros_like(members[0].intercept)
    for member in members:
        scale = fit_temperature(torch.from_numpy(member.scores(val_counts)), val_labels)
        coef += scale * member.coef
        intercept += scale * member.intercept
    return LinearFit(coef, intercept, members[0].idf, svm_c)


def write_companion(model: PreTrainedModel, fit: LinearFit) -> None:
    """Write ``fit`` into the companion's tables, so that its scores are ``fit.scores`` of the text's features."""
    companion, _ = companion_of(model)
    weights = fit.coef.T * fit.idf[:, None]  # (features, num_labels): the division by the norm sums per position
    squares = fit.idf**2
    scale = float(squares.max() / max(np.abs(weights).max(), 1e-6))  # idf^2 column in the weights' int8 range
    table = torch.from_numpy(np.concatenate([weights, (squares / scale)[:, None]], axis=1)).float()
    vocab = companion.token_table.shape[0]
    with torch.no_grad():
        companion.token_table.copy_(table[:vocab])
        companion.ngram_table.copy_(table[vocab:])
        companion.idf_scale.fill_(scale)
        companion.intercept.copy_(torch.from_numpy(fit.intercept))


@torch.no_grad()
def student_and_companion(model: PreTrainedModel, tokens: TokenizedTexts, pad_id: int, batch_size: int = 256
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformer's logits without the companion (its classifier columns must still be 0) and the companion's
    scores, both (texts, num_labels), from one pass of the model (eval mode)."""
    classifier = cast(nn.Linear, model.classifier)
    num_labels = classifier.out_features
    device = classifier.weight.device
    logits, scores = [], []
    for start in range(0, len(tokens), batch_size):
        ids, mask = padded_rows(tokens, range(start, min(start + batch_size, len(tokens))), pad_id)
        pooled = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).pooler_output
        logits.append(classifier(pooled).float().cpu())
        scores.append(pooled[:, -num_labels:].float().cpu())
    return torch.cat(logits), torch.cat(scores)


def rank(logits: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, weight: float) -> tuple[float, float]:
    """Sort key of ``logits + weight * scores`` on validation: higher accuracy first, then lower negative
    log-likelihood. Not the likelihood alone: the SVM's scores are margins, not calibrated log-odds, and on news16 the
    weight minimizing the NLL (0.79) gave 0.2 points of validation accuracy where 3.2 gave 1.2."""
    combined = logits + weight * scores
    accuracy = float((combined.argmax(-1) == labels).float().mean())
    return (-accuracy, float(nn.functional.cross_entropy(combined, labels)))


def choose_weight(logits: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The grid weight that :func:`rank` puts first."""
    return float(min(WEIGHT_GRID, key=lambda weight: rank(logits, scores, labels, weight)))


def set_companion_weight(model: PreTrainedModel, weight: float) -> None:
    """The classifier adds ``weight * scores``: its companion columns become ``weight * I``."""
    classifier = cast(nn.Linear, model.classifier)
    num_labels = classifier.out_features
    with torch.no_grad():
        classifier.weight[:, -num_labels:] = weight * torch.eye(num_labels, device=classifier.weight.device)


@dataclass
class Candidate:
    """One companion the fit tries: its linear model, its weight, its validation rank (see :func:`rank`) and, when
    computed, its cross-validated accuracy alone on the training split."""

    svm_kind: SvmKind
    naive_bayes: bool
    fit: LinearFit
    weight: float
    rank: tuple[float, float]
    cross_validated_accuracy: float | None = None

    def cross_validated_key(self) -> tuple[float, float, float]:
        """Sort key: the best cross-validated accuracy first, then the best validation rank."""
        if self.cross_validated_accuracy is None:
            raise PocketbertError("this candidate was not cross-validated (companion_candidates(cross_validate=True))")
        return (-self.cross_validated_accuracy, *self.rank)


def chooses_by_cross_validation(validation_rows: int) -> bool:
    """Whether a validation split of ``validation_rows`` is too small to choose the linear model (the module docstring
    says why)."""
    return validation_rows < MIN_VALIDATION_ROWS_TO_CHOOSE


def choose_companion(candidates: Sequence[Candidate], validation_rows: int) -> Candidate:
    """The companion that ships: the best cross-validated accuracy (validation breaks its ties) when
    :func:`chooses_by_cross_validation`, else the best validation rank."""
    if chooses_by_cross_validation(validation_rows):
        return min(candidates, key=Candidate.cross_validated_key)
    return min(candidates, key=lambda candidate: candidate.rank)


MemberSet = tuple[SvmKind, float, bool]  # (SVM kind, C, with the Naive Bayes member)


def cross_validated_accuracies(train_counts: sparse.csr_matrix, train_labels: np.ndarray, val_counts: sparse.csr_matrix,
                               val_labels: torch.Tensor, num_labels: int, svm_cs: tuple[float, ...],
                               ignored: Sequence[int] = (), folds: int = CV_FOLDS) -> dict[MemberSet, float]:
    """Accuracy of every candidate linear model alone over ``folds`` stratified folds of the training split: each
    fold's texts scored by the members fitted on the other folds (their own idf), calibrated on validation as the
    shipped sum is. Empty when no class has two training texts (nothing to cross-validate)."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(folds, int(np.bincount(train_labels).max()))
    if folds < 2:
        return {}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    correct: dict[MemberSet, int] = {}
    with warnings.catch_warnings():  # classes with fewer texts than folds: scikit-learn warns, the fit copes
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = list(splitter.split(np.zeros(len(train_labels)), train_labels))
    for fit_rows, held_out in parts:
        counts, labels = train_counts[fit_rows], train_labels[fit_rows]
        idf = smooth_idf(counts, ignored)
        naive_bayes = fit_complement_nb(counts, labels, num_labels, idf=idf)
        for kind in SVM_KINDS:
            for svm_c in svm_cs:
                svm = fit_svm(counts, labels, num_labels, svm_c, kind, idf)
                for with_naive_bayes in (True, False):
                    fit = calibrated_sum([svm, naive_bayes] if with_naive_bayes else [svm], val_counts, val_labels,
                                         svm_c)
                    hits = int((fit.scores(train_counts[held_out]).argmax(1) == train_labels[held_out]).sum())
                    key = (kind, svm_c, with_naive_bayes)
                    correct[key] = correct.get(key, 0) + hits
    return {key: hits / len(train_labels) for key, hits in correct.items()}


def companion_candidates(train_counts: sparse.csr_matrix, train_labels: np.ndarray, val_counts: sparse.csr_matrix,
                         val_labels: torch.Tensor, student_logits: torch.Tensor,
                         svm_cs: tuple[float, ...] = SVM_C_GRID, ignored: Sequence[int] = (),
                         cross_validate: bool = True) -> list[Candidate]:
    """Every companion :func:`attach_companion` chooses from (SVM kind x ``C`` x with or without the Naive Bayes
    member), each with its best weight for the transformer's validation logits ``student_logits`` and, with
    ``cross_validate``, its cross-validated accuracy alone; the ``ignored`` feature columns
    (:func:`uninformative_columns`) get no weight."""
    num_labels = student_logits.shape[1]
    cross_validated = cross_validated_accuracies(train_counts, train_labels, val_counts, val_labels, num_labels, svm_cs,
                                                 ignored) if cross_validate else {}
    idf = smooth_idf(train_counts, ignored)  # one for every member, so that their sum is one linear model
    naive_bayes = fit_complement_nb(train_counts, train_labels, num_labels, idf=idf)
    candidates = []
    for kind in SVM_KINDS:
        for svm_c in svm_cs:
            svm = fit_svm(train_counts, train_labels, num_labels, svm_c, kind, idf)
            for with_naive_bayes in (True, False):
                members = [svm, naive_bayes] if with_naive_bayes else [svm]
                fit = calibrated_sum(members, val_counts, val_labels, svm_c)
                scores = torch.from_numpy(fit.scores(val_counts)).float()
                weight = choose_weight(student_logits, scores, val_labels)
                candidates.append(Candidate(kind, with_naive_bayes, fit, weight,
                                            rank(student_logits, scores, val_labels, weight),
                                            cross_validated.get((kind, svm_c, with_naive_bayes),
                                                                0.0 if cross_validate else None)))
    return candidates


def attach_companion(model: PreTrainedModel, train: TokenizedTexts, train_labels: torch.Tensor, val: TokenizedTexts,
                     val_labels: torch.Tensor, *, pad_id: int, unknown_id: int,
                     remap_train: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     svm_cs: tuple[float, ...] = SVM_C_GRID) -> CompanionReport:
    """Fit the companion on ``train`` and choose it (:func:`choose_companion`) and its weight on ``val`` (both in the
    model's ids after ``remap_train``; ``unknown_id`` is [UNK]'s), into ``model`` (a trained student whose companion is
    still unfitted)."""
    classifier = cast(nn.Linear, model.classifier)
    num_labels = classifier.out_features
    if classifier.weight[:, -num_labels:].abs().sum() > 0:
        raise PocketbertError("the linear companion is fitted already (its classifier columns are not 0)")
    was_training = model.training
    model.eval()
    val_counts = feature_counts(model, val)
    logits, _ = student_and_companion(model, val, pad_id)  # the companion is still off: the transformer alone
    labels = val_labels.cpu().long()
    candidates = companion_candidates(feature_counts(model, train, remap_train), train_labels.cpu().numpy(),
                                      val_counts, labels, logits, svm_cs, uninformative_columns(model, unknown_id),
                                      cross_validate=chooses_by_cross_validation(len(labels)))
    best = choose_companion(candidates, len(labels))
    write_companion(model, best.fit)
    set_companion_weight(model, best.weight)
    model.train(was_training)
    scores = torch.from_numpy(best.fit.scores(val_counts)).float()

    def accuracy(values: torch.Tensor) -> float:
        return float((values.argmax(-1) == labels).float().mean())

    return CompanionReport(weight=best.weight, student_accuracy=accuracy(logits), companion_accuracy=accuracy(scores),
                           combined_accuracy=accuracy(logits + best.weight * scores),
                           cross_validated_accuracy=best.cross_validated_accuracy, svm_c=best.fit.svm_c,
                           svm_kind=best.svm_kind, naive_bayes=best.naive_bayes)


def announce(train_rows: int, validation_rows: int, svm_cs: tuple[float, ...] = SVM_C_GRID) -> str:
    """One line before the fit: what it fits and how it will choose (cross-validation costs 5 x the fits)."""
    candidates = len(SVM_KINDS) * len(svm_cs) * 2
    how = (f"chosen by {CV_FOLDS}-fold cross-validation, as validation has fewer than "
           f"{MIN_VALIDATION_ROWS_TO_CHOOSE:,} rows" if chooses_by_cross_validation(validation_rows) else
           f"chosen on its {validation_rows:,} validation rows")
    return f"fitting the linear companion: {candidates} candidates on {train_rows:,} training texts, {how}"


def describe(report: CompanionReport) -> str:
    kind = "NB-SVM" if report.svm_kind == "nbsvm" else "SVM"
    naive_bayes = " + Complement NB" if report.naive_bayes else ""
    chosen_by = ("chosen on validation" if report.cross_validated_accuracy is None else
                 f"chosen by its {CV_FOLDS}-fold accuracy on the training split, "
                 f"{report.cross_validated_accuracy:.4f}")
    return (f"linear companion ({kind} C {report.svm_c}{naive_bayes}, over the student's tokens and bigrams; "
            f"{chosen_by}), validation accuracy: student {report.student_accuracy:.4f}, "
            f"companion {report.companion_accuracy:.4f}, together {report.combined_accuracy:.4f} "
            f"at weight {report.weight:g}")


def save_into_checkpoint(path: Path, model: PreTrainedModel, prefix: str = "model.") -> None:
    """Replace ``model``'s weights in the Lightning checkpoint at ``path`` (atomically: never half-written)."""
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["state_dict"].update({prefix + key: value.detach().cpu() for key, value in model.state_dict().items()})
    atomic_torch_save(checkpoint, path)


