"""Core ML input shapes on a trained run: fixed at the max length (128), fixed/enumerated lengths chosen from the data
(``auto``), fixed 32, and a range.

For each option the classifier is converted to an ML Program (fp16, as shipped) and the program that was converted
(``torch.export``, what Core ML compiles) runs every test headline the way an app would: padded (or cut) to the
fixed length, to the smallest enumerated length that holds it, or at its own length for a range. Per option:
the lengths, where the Neural Engine can run them (Apple's rule, not measured: Linux has no Core ML), the share of
headlines cut, accuracy and agreement with PyTorch fp32 on the unpadded rows, the largest logit difference on rows
that were not cut (the graph's parity), the mean tokens a call computes, and the CPU time per headline of that
program (batch 1, 1 thread: a proxy of compute, not of Neural Engine latency). Prints a Markdown table, writes JSON::

    NEWS_DATA_DIR=../shared/data python benchmarks/coreml_shapes.py --run tb_logs/news16_distill_cpu/latest
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from callbacks.context import eval_set as test_set  # noqa: E402
from callbacks.context import train_split  # noqa: E402
from export import coreml, shapes  # noqa: E402
from export.assets import build_tokenizer  # noqa: E402
from export.benchmark import time_calls  # noqa: E402
from export.evaluation import EvalSet, accuracy_and_macro_f1, hf_predictor, predict_all  # noqa: E402
from export.files import size_of, write_json  # noqa: E402
from export.graph import ShippedModel  # noqa: E402
from lightning_modules.checkpoints import load_exportable  # noqa: E402
from recipes.tools.config import instantiate, read_config  # noqa: E402

# name -> sequence_length, flexible_min, enumerated, minimum deployment target
OPTIONS: dict[str, tuple[Any, int | None, Any, coreml.DeploymentTarget]] = {
    "fixed max length": (None, None, None, "iOS17"),
    "fixed auto": ("auto", None, None, "iOS17"),
    "fixed 32": (32, None, None, "iOS17"),
    "enumerated auto": (None, None, "auto", "iOS18"),
    "range 8-max": (None, 8, None, "iOS17"),
}
NEURAL_ENGINE = {"fixed": "yes", "enumerated": "each length", "range": "default (longest) length only"}


def run_length(tokens: int, kind: str, lengths: list[int], flexible_min: int | None) -> int:
    if kind == "range":
        return min(max(tokens, flexible_min or 0), lengths[-1])
    return shapes.bucket(tokens, lengths)


def simulate(module: Any, examples: EvalSet, runs: list[int]) -> tuple[np.ndarray, dict[int, float]]:
    """Logits of every test row run at its length (batch 1), and the median ms of a call at each length used."""
    logits, timing = [], {}
    with torch.inference_mode():
        for index, size in enumerate(runs):
            ids, mask = (torch.from_numpy(a).int() for a in examples.fixed_length(index, size))
            logits.append(module(ids, mask).float().numpy()[0])
        for size in sorted(set(runs)):
            ids, mask = (torch.from_numpy(a).int() for a in examples.fixed_length(runs.index(size), size))
            timing[size] = float(np.median(time_calls(lambda i=ids, m=mask: module(i, m), 5, 30))) * 1000
    return np.stack(logits), timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "tb_logs" / "news16_distill_cpu" / "latest")
    parser.add_argument("--limit", type=int, help="test rows to run (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "coreml_shapes.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = args.run / "best.ckpt"
    exportable = load_exportable(checkpoint if checkpoint.exists() else next((args.run / "checkpoints").glob("*.ckpt")))
    shipped = ShippedModel(exportable.model, exportable.label_names, exportable.vocab, exportable.max_length)
    datamodule, _ = instantiate(read_config(str(args.run / "config.yaml")))
    examples, _ = test_set(datamodule, shipped)
    if args.limit:
        examples.token_ids, examples.labels = examples.token_ids[:args.limit], examples.labels[:args.limit]
    reference = predict_all(hf_predictor(shipped.model), examples)
    train_texts, _ = train_split(datamodule)
    lengths, source = shapes.training_lengths(build_tokenizer(shipped.vocab), train_texts, shipped.max_length,
                                              examples)
    stats = shapes.length_stats(lengths, source)
    rows = []
    for name, (sequence_length, flexible_min, enumerated, target) in OPTIONS.items():
        length, chosen = shapes.resolve(sequence_length, enumerated, shipped.max_length, lengths)
        kind = "enumerated" if chosen and len(chosen) > 1 else "range" if flexible_min else "fixed"
        run_lengths = chosen or [length]
        with coreml.scratch_space(), tempfile.TemporaryDirectory() as folder:
            settings = coreml.CoreMLSettings(sequence_length=length, flexible_min=flexible_min, enumerated=chosen,
                                             target=target, compute_units="ALL", precision="float16")
            mlmodel, program = coreml.convert(shipped, settings, metadata={})
            coreml.save(mlmodel, Path(folder) / "model.mlpackage")
            size_mb = size_of(Path(folder) / "model.mlpackage") / 1e6
            spec_input = coreml.describe(coreml.load_spec(Path(folder) / "model.mlpackage"))["inputs"][0]
        module = program.module()
        tokens = [len(row) for row in examples.token_ids]
        runs = [run_length(n, kind, run_lengths, flexible_min) for n in tokens]
        stacked, timing = simulate(module, examples, runs)
        kept = np.asarray(tokens) <= np.asarray(runs)
        per_headline = float(np.mean([timing[size] for size in runs]))
        row = {"option": name, "kind": kind, "lengths": run_lengths if kind != "range" else
               [flexible_min, length], "target": target, "neural_engine": NEURAL_ENGINE[kind],
               "spec_input": spec_input, "size_mb": size_mb, "cut_share": float(1 - kept.mean()),
               "mean_tokens_run": float(np.mean(runs)), "cpu_ms_per_headline": per_headline,
               "cpu_ms_by_length": timing, "max_abs_logit_diff_uncut": float(np.abs(stacked - reference)[kept].max()),
               "agreement": float((stacked.argmax(-1) == reference.argmax(-1)).mean()),
               **accuracy_and_macro_f1(stacked, examples.labels, len(shipped.label_names))}
        rows.append(row)
        print(f"{name}: {row['lengths']} accuracy {row['accuracy']:.4f} agreement {row['agreement']:.4f} "
              f"cut {row['cut_share']:.2%} {row['cpu_ms_per_headline']:.2f} ms/headline", flush=True)
    reference_accuracy = accuracy_and_macro_f1(reference, examples.labels, len(shipped.label_names))["accuracy"]
    print(f"\nPyTorch fp32 on unpadded rows: accuracy {reference_accuracy:.4f}; {len(examples)} test headlines; "
          f"lengths from the {stats['source']}: {stats['percentiles']}\n")
    print("| option | lengths | Neural Engine (Apple) | cut | mean tokens run | CPU ms/headline | accuracy | agreement "
          "| max logit diff (uncut) | size MB |\n|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        shown = "-".join(map(str, row["lengths"])) if row["kind"] == "range" else "/".join(map(str, row["lengths"]))
        print(f"| {row['option']} | {shown} | {row['neural_engine']} | {row['cut_share']:.2%} | "
              f"{row['mean_tokens_run']:.1f} | {row['cpu_ms_per_headline']:.2f} | {row['accuracy']:.4f} | "
              f"{row['agreement']:.4f} | {row['max_abs_logit_diff_uncut']:.1e} | {row['size_mb']:.2f} |")
    write_json(args.out, {"run": str(args.run), "test_examples": len(examples), "training_lengths": stats,
                          "pytorch_fp32_accuracy": reference_accuracy, "options": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
