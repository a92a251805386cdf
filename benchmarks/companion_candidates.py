"""Every linear companion the fit chooses from, scored on a trained run: which one ships and what the others score.

A run trained with ``linear_companion: true`` ships one candidate linear model (SVM or NB-SVM, its ``C``, with or
without the Naive Bayes member) at its weight of the best validation accuracy of student + companion: the best of them
on validation when the validation split has at least 1,000 rows, else the one of the best 5-fold cross-validated
accuracy on the training split (``lightning_modules.companion.choose_companion``; test texts are never read to choose).
This script reads the run's best checkpoint and its data, sets the companion's weight to 0 (the transformer alone),
refits every candidate exactly as the fit does (and cross-validates each, whatever the validation split's size), and
scores each on the validation and test splits; then the pick of each rule (the shipped one, the two it switches
between, and two narrower candidate sets of earlier versions), beside the linear baseline's test accuracy from the
run's ``benchmark.json``. Prints Markdown tables, writes JSON::

    NEWS_DATA_DIR=../shared/data python benchmarks/companion_candidates.py --run tb_logs/news16_distill_cpu/latest
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.companion_weights import load_companion_run  # noqa: E402
from export.files import write_json  # noqa: E402
from lightning_modules.checkpoints import split_examples  # noqa: E402
from lightning_modules.companion import (  # noqa: E402
    Candidate,
    choose_companion,
    companion_candidates,
    feature_counts,
    set_companion_weight,
    student_and_companion,
    uninformative_columns,
)
from lightning_modules.token_cache import TokenizedTexts  # noqa: E402
from recipes.tools.parser import run_path  # noqa: E402

# Choice rules compared by their picks (candidates, validation rows -> pick): what ships, the two rules it switches
# between whatever the validation split's size, and what the companion was before it chose (two versions).
Rule = Callable[[list[Candidate], int], Candidate]


def by_validation(keep: Callable[[Candidate], bool]) -> Rule:
    return lambda candidates, rows: min((c for c in candidates if keep(c)), key=lambda candidate: candidate.rank)


SHIPPED = "shipped: validation from 1,000 rows, else cross-validation"
RULES: dict[str, Rule] = {
    SHIPPED: choose_companion,
    "cross-validation (any size)": lambda candidates, rows: min(candidates, key=Candidate.cross_validated_key),
    "validation (any size)": by_validation(lambda candidate: True),
    "NB-SVM alone, on validation": by_validation(lambda c: c.svm_kind == "nbsvm" and not c.naive_bayes),
    "SVM or NB-SVM + Naive Bayes, on validation": by_validation(lambda candidate: candidate.naive_bayes),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=run_path, default=str(REPO / "tb_logs" / "news16_distill_cpu" / "latest"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "companion_candidates.json")
    args = parser.parse_args()
    exportable, datamodule, baseline = load_companion_run(args.run)
    model = exportable.model.eval()
    set_companion_weight(model, 0.0)  # the transformer alone; every candidate is refitted below
    splits = {}
    for split in ("train", "val", "test"):
        examples = split_examples(datamodule, split, exportable)  # in the shipped (pruned) ids, as the app feeds them
        texts = TokenizedTexts.from_rows(examples.token_ids)
        logits = student_and_companion(model, texts, examples.pad_id)[0] if split != "train" else None
        splits[split] = (feature_counts(model, texts), torch.tensor(examples.labels).long(), logits)
    (train_counts, train_labels, _), (val_counts, val_labels, val_logits), (test_counts, test_labels, test_logits) = (
        splits["train"], splits["val"], splits["test"])
    ignored = uninformative_columns(model, exportable.vocab.index("[UNK]"))
    candidates = companion_candidates(train_counts, train_labels.numpy(), val_counts, val_labels, val_logits,
                                      ignored=ignored)

    def accuracy(values: torch.Tensor, gold: torch.Tensor) -> float:
        return float((values.argmax(-1) == gold).float().mean())

    rows: list[dict[str, Any]] = []
    for candidate in candidates:
        test_scores = torch.from_numpy(candidate.fit.scores(test_counts)).float()
        rows.append({"svm_kind": candidate.svm_kind, "svm_c": candidate.fit.svm_c, "naive_bayes": candidate.naive_bayes,
                     "weight": candidate.weight, "val": -candidate.rank[0], "val_nll": candidate.rank[1],
                     "cross_validated": candidate.cross_validated_accuracy,
                     "test": accuracy(test_logits + candidate.weight * test_scores, test_labels),
                     "companion_alone_test": accuracy(test_scores, test_labels)})
    chosen = {name: choose(candidates, len(val_labels)) for name, choose in RULES.items()}
    picks = {name: next(i for i, c in enumerate(candidates) if c is pick) for name, pick in chosen.items()}
    print(f"transformer alone: validation {accuracy(val_logits, val_labels):.4f}, test "
          f"{accuracy(test_logits, test_labels):.4f}; linear baseline test "
          f"{'-' if baseline is None else f'{baseline:.4f}'}\n")
    print("| SVM | C | + Naive Bayes | alone, cross-validated on train | weight | validation | test "
          "| companion alone, test |")
    print("|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        mark = " (ships)" if i == picks[SHIPPED] else ""
        naive_bayes = "yes" if row["naive_bayes"] else "no"
        print(f"| {row['svm_kind']}{mark} | {row['svm_c']} | {naive_bayes} | {row['cross_validated']:.4f} "
              f"| {row['weight']:g} | {row['val']:.4f} | {row['test']:.4f} | {row['companion_alone_test']:.4f} |")
    print("\n| choice rule | its pick | validation | test |\n|---|---|---|---|")
    for name, i in picks.items():
        row = rows[i]
        print(f"| {name} | {row['svm_kind']} C {row['svm_c']}{' + NB' if row['naive_bayes'] else ''} "
              f"| {row['val']:.4f} | {row['test']:.4f} |")
    write_json(args.out, {"run": str(args.run), "baseline_test": baseline, "candidates": rows,
                          "picks": {name: rows[i] for name, i in picks.items()},
                          "transformer_alone": {"val": accuracy(val_logits, val_labels),
                                                "test": accuracy(test_logits, test_labels)}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
