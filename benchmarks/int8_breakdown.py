"""Where ONNX INT8 loses accuracy: a run's graph quantized whole (as shipped), its MatMuls alone, its tables alone.

ONNX Runtime's dynamic quantization (``export.onnx_export.quantize_onnx_int8``) turns two kinds of op to int8: the
MatMuls (weights per output channel, activations per tensor at run time) and the ``Gather`` tables (token and bigram
embeddings, the companion's tables; one scale a table). Quantizing one kind and leaving the other fp32 shows which
costs the accuracy, and what keeping it fp32 would cost in size. Each variant is scored on the run's validation and
test splits (tokenized as the app does) beside the fp32 graph.

    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/int8_breakdown.py --run tb_logs/news16_distill_cpu/latest

Prints a Markdown table and writes JSON (``--out``, default ``benchmarks/results/int8_breakdown.json``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export.evaluation import onnx_predictor, predict_all  # noqa: E402
from export.files import write_json  # noqa: E402
from export.onnx_export import onnx_session, quantize_onnx_int8  # noqa: E402
from lightning_modules.checkpoints import split_examples  # noqa: E402
from lightning_modules.errors import PocketbertError  # noqa: E402
from recipes.tools.config import load_run  # noqa: E402
from recipes.tools.parser import run_path  # noqa: E402

VARIANTS: dict[str, list[str] | None] = {"int8, as shipped": None, "int8 MatMuls, fp32 tables": ["MatMul"],
                                         "int8 tables, fp32 MatMuls": ["Gather"]}


def breakdown(run: Path, folder: Path) -> list[dict[str, Any]]:
    try:
        exportable, datamodule, manifest = load_run(run)
    except PocketbertError as err:
        sys.exit(f"error: {err}")
    entry = manifest.get("artifacts", {}).get("onnx_fp32")
    if entry is None:
        sys.exit(f"error: {run} has no onnx_fp32 export ({run}/export/manifest.json); pass the run dir of a recipe "
                 "that exports ONNX, e.g. tb_logs/news16_distill_cpu/latest")
    source = run / "export" / entry["path"]
    splits = {split: split_examples(datamodule, split, exportable) for split in ("val", "test")}
    paths = {"fp32": source}
    for name, op_types in VARIANTS.items():
        paths[name] = folder / f"{len(paths)}.onnx"
        quantize_onnx_int8(source, paths[name], op_types)
    reference: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for name, path in paths.items():
        predictor = onnx_predictor(onnx_session(path, threads=1))
        row: dict[str, Any] = {"variant": name, "size_mb": path.stat().st_size / 1e6}
        for split, examples in splits.items():
            predicted = predict_all(predictor, examples).argmax(axis=1)
            reference.setdefault(split, predicted)
            row[f"{split}_accuracy"] = float((predicted == np.asarray(examples.labels)).mean())
            row[f"{split}_agreement"] = float((predicted == reference[split]).mean())
        rows.append(row)
        print(f"{name}: test {row['test_accuracy']:.4f}", flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | size MB | validation | test | test drop (pts) | test agreement with fp32 |",
             "|---|---|---|---|---|---|"]
    fp32 = rows[0]["test_accuracy"]
    lines += [f"| {row['variant']} | {row['size_mb']:.2f} | {row['val_accuracy']:.4f} | {row['test_accuracy']:.4f} | "
              f"{100 * (fp32 - row['test_accuracy']):.2f} | {row['test_agreement']:.4f} |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=run_path, default=str(REPO / "tb_logs" / "news16_distill_cpu" / "latest"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "int8_breakdown.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pocketbert-int8-") as folder:
        rows = breakdown(args.run, Path(folder))
    print(markdown(rows))
    write_json(args.out, {"run": str(args.run), "rows": rows})


if __name__ == "__main__":
    main()
