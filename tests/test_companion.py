"""The linear companion: its graph computes the fitted SVM (or NB-SVM) + Naive Bayes sum exactly, it exports with
parity, and it is weighed on validation (tiny models, real headlines)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.model_selection import StratifiedKFold
from sklearn.naive_bayes import ComplementNB
from sklearn.svm import LinearSVC

from export import EvalSet
from export.evaluation import hf_predictor, onnx_predictor, parity, predict_all
from export.ngram_bert import LinearCompanion
from export.onnx_export import onnx_session, quantize_onnx_int8
from export.personalization import pooled_features
from lightning_modules import DistillationModule, NewsDataModule, TfidfTeacher, load_exportable
from lightning_modules.checkpoints import split_examples
from lightning_modules.companion import (
    MIN_VALIDATION_ROWS_TO_CHOOSE,
    SVM_C_GRID,
    SVM_KINDS,
    Candidate,
    LinearFit,
    announce,
    attach_companion,
    calibrated_sum,
    choose_companion,
    choose_weight,
    companion_candidates,
    describe,
    feature_counts,
    fit_complement_nb,
    fit_svm,
    save_into_checkpoint,
    smooth_idf,
    student_and_companion,
    tfidf,
    uninformative_columns,
    write_companion,
)
from lightning_modules.corpus import read_raw
from lightning_modules.encoders import build_from_spec
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import load_tokenizer
from lightning_modules.teachers import fit_temperature
from lightning_modules.token_cache import TokenizedTexts
from lightning_modules.vocab_pruning import PrunedVocab
from tests.conftest import NEWS16
from tests.helpers import cpu_trainer, tiny_spec
from tests.test_ngram import assert_exports_match

UNK = 100  # [UNK] in bert-base-chinese's vocabulary
LABELS = ["car", "sports", "finance"]


@pytest.fixture(scope="module")
def rows(data_dir: Path, vocab_file: Path) -> tuple[list[list[int]], torch.Tensor]:
    """600 real headlines of three classes, tokenized, with their labels."""
    tokenizer = load_tokenizer(vocab_file)
    picked = [row for row in read_raw(data_dir / "nlpcc2017" / "headlines.char.tsv", "nlpcc_char")
              if row.label in LABELS]
    picked = [row for label in LABELS for row in [r for r in picked if r.label == label][:200]]
    ids = tokenizer([row.text.replace(" ", "") for row in picked], truncation=True, max_length=64)["input_ids"]
    return ids, torch.tensor([LABELS.index(row.label) for row in picked])


def packed(rows: list[list[int]]) -> TokenizedTexts:
    texts = TokenizedTexts.from_rows(rows)
    assert [texts.row(i).tolist() for i in range(len(rows))] == rows
    return texts


def student(rows: list[list[int]]) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = tiny_spec("ngram32")
    spec.ngram_vocabulary, spec.ngram_size, spec.pooling, spec.ngram_bag = 800, 16, "mean", True
    model = build_from_spec(spec, vocab_size=21128, pad_token_id=0, label_names=LABELS, dropout=0.1,
                            linear_companion=True).eval()
    tokens = packed(rows)
    model.base_model.embeddings.ngram.fill_bigram_vocabulary(tokens.ids, tokens.offsets)
    return model


def split(rows: list[list[int]], labels: torch.Tensor) -> tuple[list[int], list[int]]:
    """Every other headline to train, the rest to validate."""
    return list(range(0, len(rows), 2)), list(range(1, len(rows), 2))


def test_an_unfitted_companion_leaves_the_student_unchanged(rows: tuple[list[list[int]], torch.Tensor]) -> None:
    ids, _ = rows
    model = student(ids)
    assert isinstance(model.base_model.companion, LinearCompanion)
    assert model.classifier.in_features == model.config.hidden_size + 16 + len(LABELS)
    assert float(model.classifier.weight[:, -len(LABELS):].detach().abs().sum()) == 0.0
    logits, scores = student_and_companion(model, packed(ids[:8]), pad_id=0)
    assert float(scores.abs().max()) == 0.0
    direct = torch.cat([model(input_ids=torch.tensor([row])).logits for row in ids[:8]])  # unpadded, one by one
    assert torch.allclose(logits, direct, atol=1e-4)


def test_the_graph_computes_the_fitted_nbsvm(rows: tuple[list[list[int]], torch.Tensor]) -> None:
    ids, labels = rows
    train, val = split(ids, labels)
    model = student(ids)
    train_counts = feature_counts(model, packed([ids[i] for i in train]))
    # every real position counts its token and its bigram row: 2 features per token
    assert train_counts.sum() == 2 * sum(len(ids[i]) for i in train)
    fit = fit_svm(train_counts, labels[train].numpy(), len(LABELS), svm_c=0.2, kind="nbsvm")
    write_companion(model, fit)
    val_tokens = packed([ids[i] for i in val])
    _, scores = student_and_companion(model, val_tokens, pad_id=0)
    val_counts = feature_counts(model, val_tokens)
    assert np.abs(scores.numpy() - fit.scores(val_counts)).max() < 1e-4  # the graph is the fitted model
    # scikit-learn, independently: per class, the NB-scaled features themselves fed to LinearSVC
    train_labels = labels[train].numpy()
    idf = np.log((1 + len(train)) / (1 + np.asarray((train_counts > 0).sum(axis=0)).ravel())) + 1.0
    for label in range(len(LABELS)):
        mine = train_labels == label
        p = np.asarray((train_counts[mine] > 0).sum(axis=0)).ravel() + 1.0
        q = np.asarray((train_counts[~mine] > 0).sum(axis=0)).ravel() + 1.0
        ratio = np.log((p / p.sum()) / (q / q.sum()))
        svm = LinearSVC(C=0.2, random_state=0).fit(tfidf(train_counts, idf) @ sparse.diags(ratio), mine)
        expected = svm.decision_function(tfidf(val_counts, idf) @ sparse.diags(ratio))
        assert np.abs(scores.numpy()[:, label] - expected).max() < 1e-4
    accuracy = float((scores.numpy().argmax(1) == labels[val].numpy()).mean())
    assert accuracy > 0.8  # three news classes from 300 headlines: a linear model separates them well


def test_the_graph_computes_the_calibrated_svm_and_naive_bayes_sum(rows: tuple[list[list[int]], torch.Tensor]) -> None:
    ids, labels = rows
    train, val = split(ids, labels)
    model = student(ids)
    train_counts = feature_counts(model, packed([ids[i] for i in train]))
    val_tokens = packed([ids[i] for i in val])
    val_counts, val_labels = feature_counts(model, val_tokens), labels[val]
    naive_bayes = fit_complement_nb(train_counts, labels[train].numpy(), len(LABELS))
    # scikit-learn, independently: the same probabilities (the centred weights shift each text's scores by a constant)
    idf = np.log((1 + len(train)) / (1 + np.asarray((train_counts > 0).sum(axis=0)).ravel())) + 1.0
    reference = ComplementNB(alpha=0.3).fit(tfidf(train_counts, idf), labels[train].numpy())
    probabilities = torch.softmax(torch.from_numpy(naive_bayes.scores(val_counts)), -1).numpy()
    assert np.abs(probabilities - reference.predict_proba(tfidf(val_counts, idf))).max() < 1e-6
    assert np.abs(naive_bayes.coef.sum(axis=0)).max() < 1e-9  # centred: the int8 table holds only the differences
    svm = fit_svm(train_counts, labels[train].numpy(), len(LABELS), svm_c=0.5, kind="svm")
    plain = LinearSVC(C=0.5, random_state=0).fit(tfidf(train_counts, idf), labels[train].numpy())
    assert np.abs(svm.scores(val_counts) - plain.decision_function(tfidf(val_counts, idf))).max() < 1e-4
    fit = calibrated_sum([svm, naive_bayes], val_counts, val_labels, svm_c=0.5)
    scales = [fit_temperature(torch.from_numpy(member.scores(val_counts)), val_labels) for member in (svm, naive_bayes)]
    assert min(scales) > 0.1 and scales[0] != pytest.approx(scales[1])
    expected = scales[0] * svm.scores(val_counts) + scales[1] * naive_bayes.scores(val_counts)
    assert np.abs(fit.scores(val_counts) - expected).max() < 1e-6
    write_companion(model, fit)
    _, scores = student_and_companion(model, val_tokens, pad_id=0)
    assert np.abs(scores.numpy() - expected).max() < 1e-4  # one linear model in the same graph
    assert float((scores.argmax(-1) == val_labels).float().mean()) > 0.8


def test_attached_companion_is_weighed_on_validation_and_saved(rows: tuple[list[list[int]], torch.Tensor],
                                                                tmp_path: Path) -> None:
    ids, labels = rows
    train, val = split(ids, labels)
    model = student(ids)  # an untrained transformer: chance level, so the companion must take over
    report = attach_companion(model, packed([ids[i] for i in train]), labels[train], packed([ids[i] for i in val]),
                              labels[val], pad_id=0, unknown_id=UNK)
    assert report.student_accuracy < 0.5 < 0.8 < report.companion_accuracy
    assert report.svm_kind in ("svm", "nbsvm") and report.svm_c in (0.1, 0.2, 0.5)
    assert ("+ Complement NB" in describe(report)) == report.naive_bayes
    assert report.weight > 0 and report.combined_accuracy >= report.companion_accuracy - 0.02
    # [UNK] and the row of every bigram outside the vocabulary weigh nothing and take no share of a text's norm (the
    # last column holds the idf^2): test texts have far more of them than training texts
    companion = model.base_model.companion
    assert companion.token_table[:, -1].count_nonzero() > 100
    assert not companion.token_table[UNK].any() and not companion.ngram_table[-1].any()
    logits = model(input_ids=torch.tensor([ids[v] for v in val[:1]])).logits
    assert int(logits.argmax()) in range(len(LABELS))
    with pytest.raises(PocketbertError, match="fitted already"):
        attach_companion(model, packed([ids[i] for i in train]), labels[train], packed([ids[i] for i in val]),
                         labels[val], pad_id=0, unknown_id=UNK)
    # the best checkpoint gets the fitted weights in place
    path = tmp_path / "best.ckpt"
    fresh = student(ids)
    torch.save({"state_dict": {f"model.{k}": v for k, v in fresh.state_dict().items()}, "epoch": 3}, path)
    save_into_checkpoint(path, model)
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 3
    assert torch.equal(saved["state_dict"]["model.classifier.weight"], model.classifier.weight)
    assert torch.equal(saved["state_dict"]["model.bert.companion.ngram_table"], model.base_model.companion.ngram_table)


def test_the_fit_ships_the_cross_validated_best_of_every_candidate(rows: tuple[list[list[int]], torch.Tensor]) -> None:
    """SVM kind x C x with or without the Naive Bayes member (which can be far worse than the SVM on a tiny corpus:
    3 classes of 60 headlines, validation 0.48 against 0.81); on 300 validation rows the linear model of the best
    5-fold accuracy on the training split ships at its best validation weight, and the report describes it."""
    ids, labels = rows
    train, val = split(ids, labels)
    model = student(ids)
    train_texts, val_texts = packed([ids[i] for i in train]), packed([ids[i] for i in val])
    train_counts = feature_counts(model, train_texts)
    logits, _ = student_and_companion(model, val_texts, 0)
    ignored = uninformative_columns(model, UNK)
    candidates = companion_candidates(train_counts, labels[train].numpy(), feature_counts(model, val_texts),
                                      labels[val], logits, ignored=ignored)
    assert sorted((c.svm_kind, c.fit.svm_c, c.naive_bayes) for c in candidates) == sorted(
        itertools.product(SVM_KINDS, SVM_C_GRID, (True, False)))
    for candidate in candidates:  # without the Naive Bayes the companion is the SVM alone, times a temperature
        if not candidate.naive_bayes:
            svm = fit_svm(train_counts, labels[train].numpy(), len(LABELS), candidate.fit.svm_c, candidate.svm_kind,
                          smooth_idf(train_counts, ignored))
            scale = (candidate.fit.coef / np.where(svm.coef == 0, 1.0, svm.coef))[svm.coef != 0]
            assert scale[0] > 0 and np.allclose(scale, scale[0])
    # the plain SVM's 5-fold accuracy, recomputed with scikit-learn's own multi-class LinearSVC: every training
    # headline scored by a model fitted (idf included) on the other four folds
    y = labels[train].numpy()
    hits = 0
    for fit_rows, held_out in StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y):
        idf = smooth_idf(train_counts[fit_rows], ignored)
        svm_c = LinearSVC(C=0.5, random_state=0).fit(tfidf(train_counts[fit_rows], idf), y[fit_rows])
        hits += int((svm_c.predict(tfidf(train_counts[held_out], idf)) == y[held_out]).sum())
    plain = next(c for c in candidates if (c.svm_kind, c.fit.svm_c, c.naive_bayes) == ("svm", 0.5, False))
    assert plain.cross_validated_accuracy == pytest.approx(hits / len(y), abs=1.5 / len(y))
    assert all(0.75 < (c.cross_validated_accuracy or 0.0) < 1.0 for c in candidates)
    best = choose_companion(candidates, len(val))  # 300 rows: the cross-validated choice
    assert len(val) < MIN_VALIDATION_ROWS_TO_CHOOSE
    assert best.cross_validated_accuracy == max(c.cross_validated_accuracy or 0.0 for c in candidates)
    report = attach_companion(model, train_texts, labels[train], val_texts, labels[val], pad_id=0, unknown_id=UNK)
    assert (report.svm_kind, report.svm_c, report.naive_bayes, report.weight) == (
        best.svm_kind, best.fit.svm_c, best.naive_bayes, best.weight)
    assert report.combined_accuracy == pytest.approx(-best.rank[0])
    assert report.cross_validated_accuracy == best.cross_validated_accuracy
    assert f"5-fold accuracy on the training split, {best.cross_validated_accuracy:.4f}" in describe(report)


def test_cross_validation_chooses_on_a_small_validation_split_and_validation_on_a_large_one() -> None:
    """On 300 validation rows, 12 linear models x 26 weights fit the validation noise, so the cross-validated accuracy
    on the training split decides (validation breaks its ties); from 1,000 rows validation decides, as it sees how each
    linear model pairs with the transformer."""
    fit = LinearFit(np.zeros((2, 3)), np.zeros(2), np.ones(3), 0.5)
    lucky = Candidate("nbsvm", False, fit, 1.0, rank=(-0.80, 0.5), cross_validated_accuracy=0.75)
    steady = Candidate("svm", True, fit, 2.0, rank=(-0.76, 0.6), cross_validated_accuracy=0.77)
    tied = Candidate("svm", False, fit, 2.0, rank=(-0.77, 0.6), cross_validated_accuracy=0.77)
    assert choose_companion([lucky, steady, tied], validation_rows=300) is tied
    assert choose_companion([lucky, steady, tied], validation_rows=MIN_VALIDATION_ROWS_TO_CHOOSE - 1) is tied
    assert choose_companion([lucky, steady, tied], validation_rows=MIN_VALIDATION_ROWS_TO_CHOOSE) is lucky
    unscored = Candidate("svm", True, fit, 2.0, rank=(-0.76, 0.6))  # validation chose: nothing cross-validated
    assert choose_companion([unscored], validation_rows=4800) is unscored
    with pytest.raises(PocketbertError, match="not cross-validated"):
        choose_companion([unscored], validation_rows=300)
    assert announce(1500, 300).endswith("12 candidates on 1,500 training texts, chosen by 5-fold cross-validation, "
                                        "as validation has fewer than 1,000 rows")
    assert announce(22398, 4800).endswith("chosen on its 4,800 validation rows")


def test_weight_zero_when_the_companion_only_adds_noise() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (400,))
    logits = torch.nn.functional.one_hot(labels, 3).float() * 4  # a perfect, confident student
    noise = torch.randn(400, 3) * 3
    assert choose_weight(logits, noise, labels) == 0.0
    assert choose_weight(torch.zeros(400, 3), logits, labels) > 0


def test_companion_exports_with_parity_and_follows_pruning(rows: tuple[list[list[int]], torch.Tensor],
                                                           vocab_file: Path, tmp_path: Path) -> None:
    ids, labels = rows
    train, val = split(ids, labels)
    model = student(ids)
    attach_companion(model, packed([ids[i] for i in train]), labels[train], packed([ids[i] for i in val]),
                     labels[val], pad_id=0, unknown_id=UNK)
    before = model(input_ids=torch.tensor([ids[1]])).logits
    pruned = PrunedVocab.from_training_ids(load_tokenizer(vocab_file), packed(ids).ids)
    pruned.prune_embeddings(model, report=False)
    assert model.base_model.companion.token_table.shape[0] == len(pruned.tokens)
    after = model(input_ids=pruned.remap(torch.tensor([ids[1]]))).logits
    assert torch.allclose(before, after, atol=1e-5)
    exported_rows = [pruned.remap(torch.tensor(row)).tolist() for row in ids[1:80:2]]
    assert_exports_match(model, exported_rows, tmp_path, int8=False)  # ONNX fp32 and the Core ML graph
    # int8 tables: the companion's weight multiplies their rounding, so the bound is looser than the transformer's
    examples = EvalSet(exported_rows, [0] * len(exported_rows))
    quantize_onnx_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    quantized = parity(predict_all(hf_predictor(model), examples),
                       predict_all(onnx_predictor(onnx_session(tmp_path / "model.int8.onnx")), examples))
    assert quantized["agreement"] >= 0.97 and quantized["max_abs_logit_diff"] < 0.15


def test_distillation_fits_the_companion_into_its_best_checkpoint(tmp_path: Path) -> None:
    """The module's own path: a pruned n-gram student, the companion fitted at train end on the remapped training ids
    and the re-tokenized validation texts, the best checkpoint rewritten, and ``companion.json`` written."""
    L.seed_everything(0)
    dm = NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=NEWS16[:4], limit_per_class=150,
                        batch_size=32, cache_dir=tmp_path / "cache")
    spec = tiny_spec("ngram32")
    spec.ngram_vocabulary, spec.ngram_size, spec.pooling, spec.ngram_bag = 600, 16, "mean", True
    module = DistillationModule(teachers=[TfidfTeacher(folds=3)], label_names=dm.label_names,
                                tokenizer=dm.tokenizer_path, architecture=spec, learning_rate=1e-4,
                                linear_companion=True)
    trainer = cpu_trainer(max_epochs=1, default_root_dir=tmp_path, enable_checkpointing=True,
                          logger=L.pytorch.loggers.CSVLogger(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert module.pruned is not None  # the companion's token table follows the pruned vocabulary
    report = json.loads((Path(trainer.log_dir or "") / "companion.json").read_text())
    # one epoch at a tiny learning rate: the transformer is near chance, the companion must carry the sum
    assert report["companion_accuracy"] > 0.7 > report["student_accuracy"] and report["weight"] > 0
    # 90 validation headlines: the linear model was chosen by cross-validation on the training split
    assert report["cross_validated_accuracy"] > 0.7
    best = Path(trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    exportable = load_exportable(best)
    num_labels = len(dm.label_names)
    assert torch.equal(exportable.model.classifier.weight[:, -num_labels:],
                       report["weight"] * torch.eye(num_labels))
    # the shipped model (checkpoint, pruned vocabulary, no training code) reproduces the fitted validation accuracy
    val = split_examples(dm, "val", exportable)
    logits = pooled_features(exportable.model, val) @ exportable.model.classifier.weight.detach().numpy().T
    logits += exportable.model.classifier.bias.detach().numpy()
    accuracy = float((logits.argmax(1) == np.asarray(val.labels)).mean())
    assert accuracy == pytest.approx(report["combined_accuracy"], abs=1e-6)
