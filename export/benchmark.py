"""Size, parameters, CPU latency/throughput and test accuracy of every exported variant, and budgets on them.

Every runtime variant is loaded back from its file in the export folder (the numbers describe what ships), run
with a fixed thread count, warmed up, then timed: batch-1 latency at a fixed length (p50/p95 over ``repeats``
calls) and batch-32 throughput on real test rows padded to each batch's longest. Accuracy and macro-F1 are on the
whole test set; agreement is the fraction of test predictions equal to PyTorch fp32's. Core ML runs only on
macOS, so on Linux its variants report size alone.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.baseline import BASELINE, baseline_of, lead_points
from export.evaluation import (
    EvalSet,
    Predictor,
    accuracy_and_macro_f1,
    hf_predictor,
    onnx_predictor,
    predict_all,
    torch_predictor,
)
from export.files import read_manifest, write_json, write_text
from export.graph import load_hf_dir
from export.onnx_export import onnx_session
from export.torch_export import load_torchscript

REFERENCE = "pytorch_fp32"
DEFAULT_SHIPPED = "onnx_int8"  # what an app ships when the budgets do not name a variant
ORDER = [REFERENCE, "pytorch_int8", "onnx_fp32", "onnx_int8", "onnx_ptq_int8", "onnx_qat_int8", "coreml",
         "coreml_w8", "coreml_ptq_w8a8", "coreml_qat_w8a8", "coreml_sparse", "coreml_sparse_w8",
         "coreml_personalizable"]
RUNTIME_FORMATS = ("pytorch", "torchscript", "onnx")  # formats that run (and are timed) here
BENCHMARKED_FORMATS = (*RUNTIME_FORMATS, "coreml")  # the rows of the benchmark: Core ML is sized, not run
COLUMNS = [("variant", "variant"), ("format", "format"), ("size_mb", "size MB"), ("parameters", "params"),
           ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("throughput_per_s", "batch-32 /s"),
           ("accuracy", "accuracy"), ("accuracy_drop_points", "drop (pts)"),
           ("lead_over_baseline_points", "vs baseline (pts)"), ("macro_f1", "macro-F1"), ("agreement", "agreement")]


@dataclass
class Budgets:
    """Limits that fail the run when a variant breaks them (leave one unset to skip it).

    Args:
        max_size_mb: Largest artifact size in MB (10^6 bytes).
        max_accuracy_drop: Largest test accuracy drop below PyTorch fp32, in percentage points.
        max_p50_ms: Slowest batch-1 p50 CPU latency in milliseconds.
        min_lead_over_baseline: Least test accuracy lead over the linear baseline (TF-IDF + linear SVM fitted on the
            same training split), in percentage points; negative allows trailing it by that much.
        variants: Variants the budgets apply to, e.g. ``[onnx_int8, coreml_w8]``; all measured ones by default.
    """

    max_size_mb: float | None = None
    max_accuracy_drop: float | None = None
    max_p50_ms: float | None = None
    min_lead_over_baseline: float | None = None
    variants: list[str] | None = None


@dataclass
class TimingSettings:
    threads: int = 1
    latency_length: int = 128
    warmup: int = 5
    repeats: int = 30
    throughput_batch: int = 32


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_predictor(export_dir: Path, entry: dict[str, Any], threads: int) -> Predictor | None:
    """A predictor for a runtime artifact, or None for formats Linux cannot run (Core ML)."""
    path = export_dir / entry["path"]
    if entry["format"] == "pytorch":
        return hf_predictor(load_hf_dir(path))
    if entry["format"] == "torchscript":
        return torch_predictor(load_torchscript(path))
    if entry["format"] == "onnx":
        return onnx_predictor(onnx_session(path, threads))
    return None


def time_calls(call: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds per call after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure(predictor: Predictor, eval_set: EvalSet, settings: TimingSettings) -> dict[str, float]:
    ids, mask = eval_set.fixed_length(0, settings.latency_length)
    latencies = np.asarray(time_calls(lambda: predictor(ids, mask), settings.warmup, settings.repeats)) * 1000
    batches = list(eval_set.batches(settings.throughput_batch))
    cycle = iter(batches * math.ceil(settings.repeats / max(1, len(batches))))
    rows = [0]

    def one_batch() -> None:
        batch_ids, batch_mask = next(cycle)
        rows[0] += len(batch_ids)
        predictor(batch_ids, batch_mask)

    warm = min(2, len(batches))
    for ids_b, mask_b in batches[:warm]:
        predictor(ids_b, mask_b)
    seconds = sum(time_calls(one_batch, 0, settings.repeats))
    return {"p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
            "throughput_per_s": rows[0] / seconds}


def run_benchmark(export_dir: Path, eval_set: EvalSet, num_labels: int, num_parameters: int,
                  settings: TimingSettings) -> list[dict[str, Any]]:
    """One row per artifact in the manifest that is a model (runtime variants measured, Core ML sized)."""
    manifest = read_manifest(export_dir)
    rows: list[dict[str, Any]] = []
    reference_predictions: np.ndarray | None = None
    entries = sorted(manifest["artifacts"].items(),
                     key=lambda item: (ORDER.index(item[0]) if item[0] in ORDER else len(ORDER), item[0]))
    with torch_threads(settings.threads):
        for name, entry in entries:
            if entry["format"] not in BENCHMARKED_FORMATS:
                continue
            row: dict[str, Any] = {"variant": name, "format": entry["format"], "path": entry["path"],
                                   "size_mb": entry["bytes"] / 1e6, "parameters": num_parameters}
            predictor = load_predictor(export_dir, entry, settings.threads)
            if predictor is not None:
                logits = predict_all(predictor, eval_set)
                row.update(accuracy_and_macro_f1(logits, eval_set.labels, num_labels))
                predictions = logits.argmax(-1)
                if reference_predictions is None and name == REFERENCE:
                    reference_predictions = predictions
                if reference_predictions is not None:
                    row["agreement"] = float((predictions == reference_predictions).mean())
                row.update(measure(predictor, eval_set, settings))
            else:
                row["note"] = "size only: Core ML predicts on macOS only"
                simulated = entry.get("simulated_in_pytorch")
                if simulated:
                    row["simulated_accuracy"] = simulated["accuracy"]
                    row["note"] += f"; int8 weights simulated in PyTorch: accuracy {simulated['accuracy']:.4f}"
            rows.append(row)
    reference = next((r for r in rows if r["variant"] == REFERENCE and "accuracy" in r), None)
    for row in rows:
        if reference is not None and "accuracy" in row:
            row["accuracy_drop_points"] = 100 * (reference["accuracy"] - row["accuracy"])
    return rows


def check_budgets(rows: list[dict[str, Any]], budgets: Budgets) -> list[str]:
    """One line per broken budget (empty when all hold).

    A variant that ``budgets.variants`` names must have every figure a set budget limits: Core ML on Linux has no
    measured drop or latency, and a budget that cannot be checked must not pass. Without ``variants`` the budgets
    apply to whatever was measured (the verdicts say "not measured" for the rest).
    """
    broken = []
    named = budgets.variants
    exported = {row["variant"] for row in rows}
    for name in named or []:
        if name not in exported:
            broken.append(f"{name} is named in budgets.variants but was not exported; add its exporter or remove it "
                          "from variants")
    for row in rows:
        # the linear baseline is a yardstick, not a shipped variant: no budget applies to it
        if row["variant"] == BASELINE or (named is not None and row["variant"] not in named):
            continue
        name = row["variant"]
        why = f" ({row['note']})" if "note" in row else ""
        if budgets.max_size_mb is not None and row["size_mb"] > budgets.max_size_mb:
            broken.append(f"{name} is {row['size_mb']:.1f} MB > max_size_mb {budgets.max_size_mb}")
        drop = row.get("accuracy_drop_points")
        if budgets.max_accuracy_drop is not None:
            if drop is None and named is not None:
                broken.append(f"{name}: max_accuracy_drop is set but its accuracy drop was not measured{why}; remove "
                              f"{name} from budgets.variants or the budget")
            elif drop is not None and drop > budgets.max_accuracy_drop:
                broken.append(f"{name} loses {drop:.2f} accuracy points > max_accuracy_drop "
                              f"{budgets.max_accuracy_drop}")
        p50 = row.get("p50_ms")
        if budgets.max_p50_ms is not None:
            if p50 is None and named is not None:
                broken.append(f"{name}: max_p50_ms is set but its p50 latency was not measured{why}; remove {name} "
                              "from budgets.variants or the budget")
            elif p50 is not None and p50 > budgets.max_p50_ms:
                broken.append(f"{name} p50 latency {p50:.1f} ms > max_p50_ms {budgets.max_p50_ms}")
        lead = row.get("lead_over_baseline_points")
        if budgets.min_lead_over_baseline is not None and ("accuracy" in row or named is not None):
            if lead is None:
                reason = ("no baseline was measured (no training texts in the export context)" if "accuracy" in row
                          else f"its accuracy was not measured{why}")
                broken.append(f"{name}: min_lead_over_baseline is set but {reason}")
            elif lead < budgets.min_lead_over_baseline:
                broken.append(f"{name} leads the baseline by {lead:.2f} points < min_lead_over_baseline "
                              f"{budgets.min_lead_over_baseline}")
    return broken


def add_baseline(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Append the baseline row and give every measured variant its accuracy lead over it, in points."""
    for row in rows:
        if "accuracy" in row:
            row["lead_over_baseline_points"] = lead_points(row["accuracy"], baseline)
    return [*rows, baseline]


def baseline_verdict(rows: list[dict[str, Any]], shipped: str | None) -> str | None:
    """One sentence: by how many points the shipped variant leads (or trails) the linear baseline."""
    baseline = baseline_of(rows)
    row = next((row for row in rows if row["variant"] == shipped), None)
    if baseline is None or row is None or "lead_over_baseline_points" not in row:
        return None
    lead = row["lead_over_baseline_points"]
    verb = "leads" if lead >= 0 else "trails"
    return (f"The shipped variant {shipped} {verb} the linear baseline ({baseline['model']}, "
            f"fitted on the same {baseline['train_examples']} training texts) by {abs(lead):.2f} accuracy points "
            f"({row['accuracy']:.4f} vs {baseline['accuracy']:.4f}).")


def shipped_variant(rows: list[dict[str, Any]], budgets: Budgets) -> tuple[str, str]:
    """The variant an app ships, and why: the first of ``budgets.variants`` when set, else ONNX INT8 when exported,
    else the PyTorch fp32 reference (``python -m recipes classify`` runs it by default)."""
    names = [row["variant"] for row in rows if row["variant"] != BASELINE]
    if budgets.variants:
        return budgets.variants[0], "the first of budgets.variants"
    if DEFAULT_SHIPPED in names:
        return DEFAULT_SHIPPED, "ONNX INT8 was exported and no budgets.variants are set"
    return (REFERENCE if REFERENCE in names or not names else names[0]), "no budgets.variants and no ONNX INT8"


def budget_verdicts(rows: list[dict[str, Any]], budgets: Budgets) -> list[str]:
    """One line per variant the budgets apply to, each budget with its value, limit and OK/FAIL, then PASS/FAIL."""
    # (title, row key, unit, limit, the limit is a floor rather than a ceiling)
    limits = [("size", "size_mb", "MB", budgets.max_size_mb, False),
              ("accuracy drop", "accuracy_drop_points", "pts", budgets.max_accuracy_drop, False),
              ("p50", "p50_ms", "ms", budgets.max_p50_ms, False),
              ("lead over baseline", "lead_over_baseline_points", "pts", budgets.min_lead_over_baseline, True)]
    limits = [(title, key, unit, limit, floor) for title, key, unit, limit, floor in limits if limit is not None]
    if not limits:
        return ["budgets: none set (ExportBenchmark budgets: max_size_mb, max_accuracy_drop, max_p50_ms, "
                "min_lead_over_baseline)"]
    lines = []
    for row in rows:
        if row["variant"] == BASELINE or (budgets.variants is not None and row["variant"] not in budgets.variants):
            continue
        parts, passed = [], True
        for title, key, unit, limit, floor in limits:
            value = row.get(key)
            if value is None:
                parts.append(f"{title} not measured")
                continue
            ok = value >= limit if floor else value <= limit
            passed &= ok
            sign = (">=" if ok else "<") if floor else ("<=" if ok else ">")
            parts.append(f"{title} {value:.2f} {unit} {sign} {limit} {'OK' if ok else 'FAIL'}")
        lines.append(f"budget {row['variant']}: {'; '.join(parts)} -> {'PASS' if passed else 'FAIL'}")
    return lines


def markdown(rows: list[dict[str, Any]], settings: TimingSettings, examples: int,
             shipped: tuple[str, str] | None = None, verdicts: list[str] | None = None) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in COLUMNS) + " |")
    verdict = baseline_verdict(rows, shipped[0] if shipped else None)
    notes = [f"- {row['variant']}: {row['note']}" for row in rows if "note" in row]
    lines += ["", verdict] if verdict else []
    lines += ["", *notes] if notes else []
    if shipped is not None:
        lines += ["", f"shipped: {shipped[0]} ({shipped[1]}; `python -m recipes classify` runs it by default)"]
    lines += ["", *verdicts] if verdicts else []
    return (f"CPU, {settings.threads} thread(s); latency: batch 1 x {settings.latency_length} tokens, "
            f"{settings.warmup} warm-up + {settings.repeats} timed calls; throughput: batches of "
            f"{settings.throughput_batch} real test rows; accuracy on {examples} test examples; agreement = "
            f"same prediction as {REFERENCE}. Core ML: size only (predicts on macOS only).\n\n" + "\n".join(lines))


DECIMALS = {"accuracy_drop_points": 2, "lead_over_baseline_points": 2, "size_mb": 2, "p50_ms": 2, "p95_ms": 2,
            "throughput_per_s": 1, "accuracy": 4, "macro_f1": 4, "agreement": 4}


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{DECIMALS.get(key, 3)}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_reports(export_dir: Path, rows: list[dict[str, Any]], settings: TimingSettings, examples: int,
                  broken: list[str], budgets: Budgets | None = None) -> str:
    """``benchmark.json`` and ``benchmark.md`` (with the shipped variant and the budget verdicts); returns the
    markdown."""
    budgets = budgets or Budgets()
    shipped, verdicts = shipped_variant(rows, budgets), budget_verdicts(rows, budgets)
    text = markdown(rows, settings, examples, shipped, verdicts)
    write_json(export_dir / "benchmark.json", {"settings": vars(settings), "test_examples": examples,
                                               "variants": rows, "broken_budgets": broken, "shipped": shipped[0],
                                               "shipped_because": shipped[1], "budgets": vars(budgets),
                                               "budget_verdicts": verdicts})
    write_text(export_dir / "benchmark.md", f"# Export benchmark\n\n{text}\n")
    return text
