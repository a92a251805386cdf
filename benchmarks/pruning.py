"""Pruning on the shipped news16 student: magnitude and structured pruning at 30% and 50%, each fine-tuned.

Runs ``recipes/configs/news16_prune_cpu.yaml`` once per variant (the same 3-epoch fine-tuning from the trained student,
with no pruning as the control), then reads each run's ``export/`` (benchmark, manifest, profile) and times every run's
ONNX files again side by side in this one process (interleaved rounds, batch 1, 1 thread, at 32 and 128 tokens), since
runs made at different times on a shared machine do not compare. Prints a Markdown table (the linear baseline from the
runs' ``benchmark.json``, TF-IDF character 1-2-grams + LinearSVC fitted on the same training split, then a row per run
with its fp32 / INT8 lead over the baseline in points) and writes JSON::

    NEWS_DATA_DIR=../shared/data python benchmarks/pruning.py            # 5 fits, about 25 minutes on 2 cores
    NEWS_DATA_DIR=../shared/data python benchmarks/pruning.py --skip-fit # re-read and re-time the last runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export.baseline import baseline_of, lead_cell, lead_points  # noqa: E402
from export.evaluation import EvalSet  # noqa: E402
from export.files import write_json  # noqa: E402
from export.onnx_export import onnx_session  # noqa: E402

RECIPE = REPO / "recipes" / "configs" / "news16_prune_cpu.yaml"
# name -> the pruning callback the variant trains with (None: the control, fine-tuned without pruning)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "no pruning": None,
    "magnitude 30%": {"class_path": "callbacks.MagnitudePruning", "init_args": {"sparsity": 0.3}},
    "magnitude 50%": {"class_path": "callbacks.MagnitudePruning", "init_args": {"sparsity": 0.5}},
    "structured 30%": {"class_path": "callbacks.StructuredPruning", "init_args": {"fraction": 0.3}},
    "structured 50%": {"class_path": "callbacks.StructuredPruning", "init_args": {"fraction": 0.5}},
}


def logger_name(variant: str) -> str:
    return "news16_prune_" + variant.replace(" ", "_").replace("%", "")


def fit(variant: str, pruning: dict[str, Any] | None, folder: Path) -> None:
    config = yaml.safe_load(RECIPE.read_text("utf-8"))
    callbacks = [c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("Pruning")]
    if pruning is not None:
        callbacks.insert(2, pruning)
    config["trainer"]["callbacks"] = callbacks
    config["trainer"]["logger"]["init_args"]["name"] = logger_name(variant)
    path = folder / f"{logger_name(variant)}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), "utf-8")
    with (folder / f"{logger_name(variant)}.log").open("w") as log:
        done = subprocess.run([sys.executable, "-m", "recipes", "fit", "--config", str(path)], cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    print(f"{variant}: exit status {done.returncode} (log {folder / f'{logger_name(variant)}.log'})", flush=True)


def time_side_by_side(files: dict[str, Path], rows: list[list[int]], lengths: list[int],
                      rounds: int = 40, calls: int = 10) -> dict[str, dict[int, float]]:
    """Median ms per batch-1 call of each file at each length, rounds interleaved across the files."""
    sessions = {name: onnx_session(path, 1) for name, path in files.items()}
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in lengths} for name in files}
    inputs = {n: EvalSet(rows, [0] * len(rows)).fixed_length(0, n) for n in lengths}
    for session in sessions.values():  # warm up
        for n in lengths:
            session.run(["logits"], {"input_ids": inputs[n][0], "attention_mask": inputs[n][1]})
    for _ in range(rounds):
        for name, session in sessions.items():
            for n in lengths:
                feed = {"input_ids": inputs[n][0], "attention_mask": inputs[n][1]}
                start = time.perf_counter()
                for _ in range(calls):
                    session.run(["logits"], feed)
                times[name][n].append((time.perf_counter() - start) / calls * 1000)
    return {name: {n: float(np.median(values)) for n, values in by_length.items()} for name, by_length in times.items()}


def summarize(variant: str, export_dir: Path) -> dict[str, Any]:
    benchmark = json.loads((export_dir / "benchmark.json").read_text())
    manifest = json.loads((export_dir / "manifest.json").read_text())
    rows = {row["variant"]: row for row in benchmark["variants"]}
    artifacts = manifest["artifacts"]
    config = json.loads((export_dir / "pytorch" / "config.json").read_text())
    sparse = artifacts.get("coreml_sparse", {})
    baseline = baseline_of(benchmark["variants"])  # None for a run benchmarked before the baseline row existed
    accuracy = {"fp32": rows["pytorch_fp32"]["accuracy"], "int8": rows["onnx_int8"]["accuracy"]}
    return {"variant": variant, "export": str(export_dir), "parameters": manifest["parameters"],
            "layer_heads": config.get("layer_heads"),
            "layer_intermediate_sizes": config.get("layer_intermediate_sizes"),
            "prunable_sparsity": sparse.get("prunable_sparsity"), "model_sparsity": sparse.get("model_sparsity"),
            "accuracy_fp32": accuracy["fp32"], "accuracy_int8": accuracy["int8"],
            "macro_f1_int8": rows["onnx_int8"]["macro_f1"], "baseline": baseline,
            "vs_baseline_points": {kind: lead_points(value, baseline) for kind, value in accuracy.items()},
            "size_mb": {name: rows[name]["size_mb"] for name in ("onnx_fp32", "onnx_int8", "coreml", "coreml_w8",
                                                                 "coreml_sparse", "coreml_sparse_w8") if name in rows}}


def shared_baseline(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``baseline`` of the first row that has one: every run fits it on the same split of the same recipe, so
    their baselines agree (:func:`differing_baselines` says when they do not)."""
    return next((row["baseline"] for row in rows if row.get("baseline") is not None), None)


def differing_baselines(rows: list[dict[str, Any]]) -> list[str]:
    """A note line under the table when the rows' baselines differ (e.g. a run benchmarked before a change to the
    baseline), since the table shows one baseline row but each row's lead is over its own run's."""
    accuracies = sorted({f"{row['baseline']['accuracy']:.4f}" for row in rows if row.get("baseline")})
    if len(accuracies) < 2:
        return []
    return [f"\nnote: the runs' baselines differ ({', '.join(accuracies)}); each run's lead is over its own"]


def markdown(summaries: list[dict[str, Any]]) -> str:
    """The table: the linear baseline's row, then a row per run (:func:`summarize` with ``onnx_ms``)."""
    header = ["variant", "params", "zero weights", "heads / FFN per layer", "ONNX INT8 MB", "Core ML fp16 MB",
              "Core ML sparse MB", "Core ML sparse int8 MB", "accuracy fp32", "accuracy INT8",
              "vs baseline fp32 / INT8 (pts)", "INT8 p50 @32 / @128 ms", "fp32 p50 @32 / @128 ms"]
    baseline = shared_baseline(summaries)
    cells = ["linear baseline (not in these runs' benchmark.json)"] + ["-"] * (len(header) - 1)
    if baseline is not None:
        # one float scikit-learn model: its accuracy under both accuracy columns, and its size (n-gram vocabulary and
        # weights) in its name, since the size columns are of formats it does not ship in
        cells[0] = f"linear baseline: {baseline['model']} (scikit-learn, {baseline['size_mb']:.2f} MB)"
        cells[1] = f"{baseline['parameters']:,}" if "parameters" in baseline else "-"
        cells[8] = cells[9] = f"{baseline['accuracy']:.4f}"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(cells) + " |"]
    for s in summaries:
        sizes, ms = s["size_mb"], s["onnx_ms"]
        shape = f"{s['layer_heads']} / {s['layer_intermediate_sizes']}" if s["layer_heads"] else "full"
        zeros = f"{s['prunable_sparsity']:.0%}" if s["prunable_sparsity"] is not None else "-"
        lead = s.get("vs_baseline_points") or {}
        cells = [s["variant"], f"{s['parameters']:,}", zeros, shape, f"{sizes['onnx_int8']:.2f}",
                 f"{sizes['coreml']:.2f}", f"{sizes.get('coreml_sparse', float('nan')):.2f}",
                 f"{sizes.get('coreml_sparse_w8', float('nan')):.2f}", f"{s['accuracy_fp32']:.4f}",
                 f"{s['accuracy_int8']:.4f}", f"{lead_cell(lead.get('fp32'))} / {lead_cell(lead.get('int8'))}",
                 f"{ms['int8'][32]:.2f} / {ms['int8'][128]:.2f}", f"{ms['fp32'][32]:.2f} / {ms['fp32'][128]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + differing_baselines(summaries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-fit", action="store_true", help="summarize the latest runs of each variant")
    parser.add_argument("--only", nargs="*", help="variants to fit (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pruning.json")
    args = parser.parse_args()
    folder = args.out.parent / "pruning"
    folder.mkdir(parents=True, exist_ok=True)
    if not args.skip_fit:
        for variant, pruning in VARIANTS.items():
            if not args.only or variant in args.only:
                fit(variant, pruning, folder)
    summaries = []
    shipped = REPO / "tb_logs" / "news16_distill_cpu" / "latest" / "export"
    if (shipped / "benchmark.json").is_file():
        summaries.append(summarize("shipped student (no fine-tuning)", shipped))
    for variant in VARIANTS:
        # the newest run that wrote its benchmark (a broken budget fails a run after its reports, with no `latest`)
        runs = sorted((REPO / "tb_logs" / logger_name(variant)).glob("version_*/export/benchmark.json"),
                      key=lambda path: int(path.parts[-3].removeprefix("version_")))
        if runs:
            summaries.append(summarize(variant, runs[-1].parent))
    golden = json.loads((shipped / "golden_tokens.json").read_text())["cases"]
    rows = [golden[-1]["input_ids"]]  # a real test headline in the student's ids, padded to each length
    files = {s["variant"] + " int8": Path(s["export"]) / "model.int8.onnx" for s in summaries}
    files |= {s["variant"] + " fp32": Path(s["export"]) / "model.onnx" for s in summaries}
    timing = time_side_by_side(files, rows, [32, 128])
    for summary in summaries:
        summary["onnx_ms"] = {kind: timing[f"{summary['variant']} {kind}"] for kind in ("int8", "fp32")}
    print(markdown(summaries))
    write_json(args.out, {"variants": summaries, "baseline": shared_baseline(summaries)})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
