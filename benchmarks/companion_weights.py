"""What the linear companion's weight is worth on a trained run: validation and test accuracy for every weight.

A run trained with ``linear_companion: true`` ships ``student logits + weight * companion scores`` with the weight of
the best validation accuracy (``lightning_modules.companion``; test texts are never read to choose it). This script
reads the run's best checkpoint and its data, splits the shipped classifier back into the transformer's logits and the
companion's scores (its columns are ``weight * I``), and scores every weight of the grid on the validation and test
splits, beside the linear baseline's test accuracy from the run's ``benchmark.json``. Prints a Markdown table and writes
JSON::

    NEWS_DATA_DIR=../shared/data python benchmarks/companion_weights.py --run tb_logs/news16_distill_cpu/latest
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export.baseline import read_baseline  # noqa: E402
from export.files import write_json  # noqa: E402
from export.personalization import pooled_features  # noqa: E402
from lightning_modules.checkpoints import ExportableModel, split_examples  # noqa: E402
from lightning_modules.companion import WEIGHT_GRID  # noqa: E402
from lightning_modules.errors import PocketbertError  # noqa: E402
from recipes.tools.config import load_run  # noqa: E402
from recipes.tools.parser import run_path  # noqa: E402


def split_logits(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the transformer's logits, the companion's scores), both (texts, labels), from the pooled features."""
    labels = weight.shape[0]
    return features[:, :-labels] @ weight[:, :-labels].T + bias, features[:, -labels:]


def load_companion_run(run: Path) -> tuple[ExportableModel, Any, float | None]:
    """A run trained with ``linear_companion: true``: its exported student (best checkpoint), its DataModule (from the
    run's config) and the linear baseline's test accuracy from its ``benchmark.json`` (None without one). Exits with a
    one-line error for a run without an exported student or trained without the companion."""
    try:
        exportable, datamodule, _ = load_run(run)
    except PocketbertError as err:
        sys.exit(f"error: {err}")
    if not getattr(exportable.model.config, "linear_companion", False):
        sys.exit(f"error: {run} was trained without linear_companion; train with "
                 "--model.init_args.linear_companion true")
    baseline = read_baseline(run / "export")
    return exportable, datamodule, None if baseline is None else baseline.get("accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=run_path, default=str(REPO / "tb_logs" / "news16_distill_cpu" / "latest"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "companion_weights.json")
    args = parser.parse_args()
    exportable, datamodule, baseline = load_companion_run(args.run)
    classifier = cast(torch.nn.Linear, exportable.model.classifier)
    weight, bias = classifier.weight.detach().numpy(), classifier.bias.detach().numpy()
    labels = weight.shape[0]
    shipped = float(weight[0, -labels])
    assert np.allclose(weight[:, -labels:], shipped * np.eye(labels)), "the companion columns are not weight * I"
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in ("val", "test"):
        examples = split_examples(datamodule, split, exportable)
        with torch.no_grad():
            student, scores = split_logits(pooled_features(exportable.model, examples), weight, bias)
        splits[split] = (student, scores, np.asarray(examples.labels))

    def accuracy(split: str, companion_weight: float | None) -> float:
        student, scores, gold = splits[split]
        logits = scores if companion_weight is None else student + companion_weight * scores
        return float((logits.argmax(1) == gold).mean())

    rows: list[dict[str, Any]] = [{"model": "companion alone", "weight": None, "val": accuracy("val", None),
                                   "test": accuracy("test", None)}]
    rows += [{"model": "student + weight x companion" + (" (shipped)" if abs(w - shipped) < 1e-4 else ""), "weight": w,
              "val": accuracy("val", w), "test": accuracy("test", w)} for w in WEIGHT_GRID]
    print(f"| model | weight | validation | test |\n|---|---|---|---|\n| linear baseline | - | - | "
          f"{'-' if baseline is None else f'{baseline:.4f}'} |")
    for row in rows:
        print(f"| {row['model']} | {'-' if row['weight'] is None else row['weight']} | {row['val']:.4f} | "
              f"{row['test']:.4f} |")
    write_json(args.out, {"run": str(args.run), "shipped_weight": shipped, "baseline_test": baseline, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
