"""QAT vs post-training static INT8 (PTQ) vs dynamic INT8 on the shipped news16 student, side by side.

Fits ``recipes/configs/news16_qat_cpu.yaml`` twice from the trained student: with quantization-aware training, and the
same 3-epoch fine-tuning without it (the control: what fine-tuning alone gives). Each run writes its static INT8 files
with the same calibration (the QAT run also post-training quantizes the starting student). Then reads every run's
manifest and benchmark and times the ONNX files again side by side in this one process (interleaved rounds, batch 1, 1
thread, 32 and 128 tokens), since runs made at different times on a shared machine do not compare. Accuracy is on the
4,800 news16 test headlines; Core ML W8A8 accuracy is simulated in PyTorch (Core ML predicts on macOS only). Prints a
Markdown table (first the linear baseline from the runs' ``benchmark.json``, TF-IDF character 1-2-grams + LinearSVC
fitted on the same training split; each model's fp32 / dynamic / static / W8A8 lead over it in points) and writes
JSON::

    NEWS_DATA_DIR=../shared/data python benchmarks/qat.py              # 2 fits, about 15 minutes on 2 cores
    NEWS_DATA_DIR=../shared/data python benchmarks/qat.py --skip-fit   # re-read and re-time the last runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pruning import differing_baselines, shared_baseline, time_side_by_side  # noqa: E402
from export.baseline import baseline_of, lead_cell, lead_points  # noqa: E402
from export.files import write_json  # noqa: E402
from export.static_int8 import through_latest  # noqa: E402

RECIPE = REPO / "recipes" / "configs" / "news16_qat_cpu.yaml"
# name -> (logger name, keep the QAT callback)
RUNS = {"QAT": ("news16_qat", True), "fine-tuned, no QAT (control)": ("news16_qat_control", False)}


def fit(name: str, logger: str, qat: bool, folder: Path) -> None:
    config = yaml.safe_load(RECIPE.read_text("utf-8"))
    callbacks = config["trainer"]["callbacks"]
    if not qat:
        callbacks = [c for c in callbacks if not c["class_path"].endswith("QuantizationAwareTraining")]
        for callback in callbacks:  # the starting student's PTQ is written once, by the QAT run
            if callback["class_path"].endswith("StaticInt8Export"):
                callback["init_args"].pop("ptq_reference", None)
            if callback["class_path"].endswith("ExportBenchmark"):  # its static file is named ptq
                callback["init_args"]["budgets"]["variants"] = ["onnx_ptq_int8"]
        config["trainer"]["callbacks"] = callbacks
    config["trainer"]["logger"]["init_args"]["name"] = logger
    # the config is written under benchmarks/results/: the recipe's repo-relative paths are made absolute
    config["model"]["init_args"]["pretrained"] = str(through_latest(REPO / config["model"]["init_args"]["pretrained"]))
    config["data"]["init_args"]["tokenizer"] = str(through_latest(REPO / config["data"]["init_args"]["tokenizer"]))
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(REPO / "tb_logs")
    for callback in callbacks:
        if callback.get("init_args", {}).get("ptq_reference"):
            callback["init_args"]["ptq_reference"] = str(through_latest(REPO / callback["init_args"]["ptq_reference"]))
    path = folder / f"{logger}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), "utf-8")
    with (folder / f"{logger}.log").open("w") as log:
        done = subprocess.run([sys.executable, "-m", "recipes", "fit", "--config", str(path)], cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    print(f"{name}: exit status {done.returncode} (log {folder / f'{logger}.log'})", flush=True)


def newest_export(logger: str) -> Path | None:
    runs = sorted((REPO / "tb_logs" / logger).glob("version_*/export/benchmark.json"),
                  key=lambda path: int(path.parts[-3].removeprefix("version_")))
    return runs[-1].parent if runs else None


def summarize(name: str, export_dir: Path) -> dict[str, Any]:
    """One run's fp32 and dynamic INT8 figures (its static INT8 ones: :func:`static_figures`)."""
    manifest = json.loads((export_dir / "manifest.json").read_text())["artifacts"]
    rows = {row["variant"]: row for row in json.loads((export_dir / "benchmark.json").read_text())["variants"]}
    return {"model": name, "export": str(export_dir), "fp32_accuracy": rows["pytorch_fp32"]["accuracy"],
            "baseline": baseline_of(list(rows.values())),  # None for a run benchmarked before the baseline row existed
            "dynamic": {"accuracy": rows["onnx_int8"]["accuracy"], "size_mb": rows["onnx_int8"]["size_mb"],
                        "path": str(export_dir / manifest["onnx_int8"]["path"])},
            "onnx_fp32_path": str(export_dir / manifest["onnx_fp32"]["path"])}


def static_figures(export_dir: Path, static: str, coreml: str) -> dict[str, Any]:
    """The ``static`` ONNX and ``coreml`` W8A8 manifest entries of ``export_dir`` (the starting student's PTQ files
    are written by the QAT run)."""
    manifest = json.loads((export_dir / "manifest.json").read_text())["artifacts"]
    onnx, w8a8 = manifest[static], manifest[coreml]
    return {"static": {"accuracy": onnx["accuracy"], "size_mb": onnx["bytes"] / 1e6,
                       "agreement_vs_fp32": onnx["parity_vs_fp32"]["agreement"],
                       "fp32_accuracy": onnx["fp32_accuracy"], "path": str(export_dir / onnx["path"])},
            "coreml_w8a8": {"simulated_accuracy": w8a8["simulated_in_pytorch"]["accuracy"],
                            "size_mb": w8a8["bytes"] / 1e6, "activation_quantize_ops": w8a8["activation_quantize_ops"],
                            "weight_int8_ops": w8a8["weight_int8_ops"]}}


def with_leads(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (:func:`summarize` | :func:`static_figures`) with each accuracy's lead over its run's baseline, in
    points."""
    accuracies = {"fp32": row["fp32_accuracy"], "dynamic": row["dynamic"]["accuracy"],
                  "static": row["static"]["accuracy"], "coreml_w8a8": row["coreml_w8a8"]["simulated_accuracy"]}
    return row | {"vs_baseline_points": {kind: lead_points(value, row.get("baseline"))
                                         for kind, value in accuracies.items()}}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: the linear baseline's row, then a row per model (:func:`with_leads` with ``p50_ms``)."""
    header = ["model", "fp32 acc", "ONNX dynamic INT8 acc", "ONNX static INT8 acc", "Core ML W8A8 acc (simulated)",
              "vs baseline fp32 / dynamic / static / W8A8 (pts)", "dynamic / static / W8A8 MB",
              "dynamic p50 @32 / @128 ms", "static p50 @32 / @128 ms"]
    baseline = shared_baseline(rows)
    cells = ["linear baseline (not in these runs' benchmark.json)"] + ["-"] * (len(header) - 1)
    if baseline is not None:  # one float scikit-learn model: its accuracy under fp32, its size in the size column
        cells[0], cells[1] = f"linear baseline: {baseline['model']}", f"{baseline['accuracy']:.4f}"
        cells[6] = f"{baseline['size_mb']:.2f} (scikit-learn)"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(cells) + " |"]
    for row in rows:
        dyn, stat, w8a8, ms = row["dynamic"], row["static"], row["coreml_w8a8"], row["p50_ms"]
        lead = row.get("vs_baseline_points") or {}
        cells = [row["model"], f"{row['fp32_accuracy']:.4f}", f"{dyn['accuracy']:.4f}", f"{stat['accuracy']:.4f}",
                 f"{w8a8['simulated_accuracy']:.4f}",
                 " / ".join(lead_cell(lead.get(kind)) for kind in ("fp32", "dynamic", "static", "coreml_w8a8")),
                 f"{dyn['size_mb']:.2f} / {stat['size_mb']:.2f} / {w8a8['size_mb']:.2f}",
                 f"{ms['dynamic'][32]:.2f} / {ms['dynamic'][128]:.2f}",
                 f"{ms['static'][32]:.2f} / {ms['static'][128]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + differing_baselines(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-fit", action="store_true", help="summarize the latest runs")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="runs to fit (default: both)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "qat.json")
    args = parser.parse_args()
    folder = args.out.parent / "qat"
    folder.mkdir(parents=True, exist_ok=True)
    if not args.skip_fit:
        for name, (logger, qat) in RUNS.items():
            if not args.only or name in args.only:
                fit(name, logger, qat, folder)
    shipped = through_latest(REPO / "tb_logs" / "news16_distill_cpu" / "latest" / "export")
    control, qat_run = newest_export(RUNS["fine-tuned, no QAT (control)"][0]), newest_export(RUNS["QAT"][0])
    if qat_run is None or not (shipped / "benchmark.json").is_file():
        raise SystemExit("missing runs: fit news16_distill_cpu.yaml first, then run this without --skip-fit")
    rows = [summarize("shipped student (PTQ)", shipped)
            | static_figures(qat_run, "onnx_ptq_int8", "coreml_ptq_w8a8")]
    if control is not None:  # the same fine-tuning without QAT (absent when only QAT was fitted)
        rows.append(summarize("fine-tuned, no QAT (PTQ)", control)
                    | static_figures(control, "onnx_ptq_int8", "coreml_ptq_w8a8"))
    rows.append(summarize("QAT", qat_run) | static_figures(qat_run, "onnx_qat_int8", "coreml_qat_w8a8"))
    rows = [with_leads(row) for row in rows]
    golden = json.loads((shipped / "golden_tokens.json").read_text())["cases"]
    token_rows = [golden[-1]["input_ids"]]  # a real test headline in the student's ids, padded to each length
    files = {"shipped fp32": Path(rows[0]["onnx_fp32_path"])}
    for row in rows:
        files[f"{row['model']} dynamic"] = Path(row["dynamic"]["path"])
        files[f"{row['model']} static"] = Path(row["static"]["path"])
    timing = time_side_by_side(files, token_rows, [32, 128])
    for row in rows:
        row["p50_ms"] = {kind: timing[f"{row['model']} {kind}"] for kind in ("dynamic", "static")}
    fp32_ms = timing["shipped fp32"]
    print(markdown(rows))
    print(f"\nONNX fp32 of the shipped student: p50 {fp32_ms[32]:.2f} / {fp32_ms[128]:.2f} ms at 32 / 128 tokens")
    write_json(args.out, {"models": rows, "baseline": shared_baseline(rows), "onnx_fp32_ms": fp32_ms})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
