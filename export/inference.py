"""Classifying new text with an export bundle the way an app does, and writing predictions as CSV or JSON lines.

A bundle is an export folder (``<run dir>/export``): ``manifest.json`` (artifacts with sizes and SHA-256,
``max_length``), ``vocab.txt`` (with the normalization it expects, recorded in the manifest and in
``golden_tokens.json``), ``labels.json`` and the model files. :func:`load_bundle` rebuilds the tokenizer from
``vocab.txt`` alone, checks it against ``golden_tokens.json`` (the app's tokenizer unit test), checks the model file
against its manifest hash and loads it with the benchmark's loader; :func:`classify` normalizes, tokenizes
(truncating to ``max_length`` and keeping ``[SEP]``), batches in input order and predicts. Batches of 64 padded to
their longest row are what the export checks and the benchmark used, so the figures match theirs exactly (dynamic
INT8 quantizes activations per batch: other batch sizes can move a few near-tied predictions).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import BertTokenizer

from export.assets import NORMALIZATION, NORMALIZERS, build_tokenizer
from export.benchmark import DEFAULT_SHIPPED, REFERENCE, RUNTIME_FORMATS, load_predictor, torch_threads
from export.errors import ExportError
from export.evaluation import EvalSet, Predictor
from export.files import MANIFEST, read_manifest, sha256_of, write_text

VARIANTS = ("onnx_int8", "onnx_fp32", "pytorch_int8", "pytorch_fp32")  # what runs off macOS
BATCH_SIZE = 64  # as export.evaluation.predict_all, which measured the manifest's and the benchmark's figures


@dataclass
class Bundle:
    """One runnable variant of an export bundle, with the text pipeline that feeds it."""

    export_dir: Path
    variant: str
    why: str  # how the variant was chosen
    model_path: Path
    label_names: list[str]
    max_length: int
    tokenizer: BertTokenizer
    normalize: Callable[[str], str]
    predictor: Predictor
    threads: int = 1


@dataclass
class Classified:
    """Predictions for the non-empty inputs; ``rows`` are positions in the input, ``empty`` the skipped ones."""

    rows: list[int]
    probabilities: np.ndarray  # (len(rows), num_labels), float64
    truncated: list[bool]
    empty: list[int] = field(default_factory=list)


def find_export_dir(run: Path) -> Path:
    """The export folder of ``run``: a run dir (``RUN/export``), the export folder itself, or a copy of it."""
    for candidate in (run / "export", run):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ExportError(f"{run} has no export/{MANIFEST}; pass a run folder whose fit exported artifacts (e.g. "
                      "tb_logs/news16_distill_cpu/latest) or its export/ folder")


def default_variant(export_dir: Path, artifacts: dict[str, Any]) -> tuple[str, str]:
    """The variant the benchmark marks as shipped when it runs here, else ONNX INT8, else PyTorch fp32 (with why)."""
    benchmark = export_dir / "benchmark.json"
    shipped = json.loads(benchmark.read_text("utf-8")).get("shipped") if benchmark.is_file() else None
    if shipped in artifacts and artifacts[shipped]["format"] in RUNTIME_FORMATS:
        return shipped, "shipped, as benchmark.json marks it"
    fallback = DEFAULT_SHIPPED if DEFAULT_SHIPPED in artifacts else REFERENCE
    if shipped is None:
        return fallback, ("the default: no benchmark.json" if not benchmark.is_file()
                          else "the default: benchmark.json marks no shipped variant")
    return fallback, f"the shipped variant {shipped} cannot run here (Core ML predicts on macOS only)"


def load_bundle(run: Path, variant: str | None = None, threads: int = 1) -> Bundle:
    """The bundle's ``variant`` (default: :func:`default_variant`) ready to predict, after checking its files."""
    export_dir = find_export_dir(run)
    manifest = read_manifest(export_dir)
    artifacts: dict[str, Any] = manifest["artifacts"]
    why = "asked for"
    if variant is None:
        variant, why = default_variant(export_dir, artifacts)
    runnable = [name for name in VARIANTS if name in artifacts]
    if variant not in artifacts or artifacts[variant]["format"] not in RUNTIME_FORMATS:
        raise ExportError(f"variant {variant} is not runnable from {export_dir} (exported and runnable here: "
                          f"{', '.join(runnable) or 'none'}); pick one with --variant")
    entry = artifacts[variant]
    model_path = _checked(export_dir, entry, variant)
    if "vocab" not in artifacts:
        raise ExportError(f"{export_dir} has no vocab.txt in its manifest; export it with AppAssets (python -m recipes "
                          "export --ckpt RUN/best.ckpt)")
    vocab_path = _checked(export_dir, artifacts["vocab"], "vocab")
    vocab = vocab_path.read_text("utf-8").split("\n")  # not splitlines(): tokens may hold U+2028
    # lower-casing etc. as training had them (bundles before they were recorded: the defaults they were built with)
    tokenizer = build_tokenizer(vocab, artifacts["vocab"].get("tokenizer"))
    max_length = int(artifacts["vocab"].get("max_length", manifest.get("max_length", 0)))
    if max_length < 3:
        raise ExportError(f"{export_dir / MANIFEST} records no max_length; re-export the bundle")
    normalization = artifacts["vocab"].get("normalization", NORMALIZATION)  # bundles before it was recorded: the one
    if normalization not in NORMALIZERS:
        raise ExportError(f"the bundle asks for text normalization {normalization!r}, which this version does not "
                          f"know ({', '.join(NORMALIZERS)}); use the pocketbert version that exported it")
    label_names = _label_names(export_dir, artifacts, manifest)
    if "golden_tokens" in artifacts:
        check_golden_tokens(_checked(export_dir, artifacts["golden_tokens"], "golden_tokens"), tokenizer,
                            NORMALIZERS[normalization], max_length)
    predictor = load_predictor(export_dir, entry, threads)
    if predictor is None:  # guarded by RUNTIME_FORMATS above
        raise ExportError(f"variant {variant} cannot run here")
    return Bundle(export_dir, variant, why, model_path, label_names, max_length, tokenizer,
                  NORMALIZERS[normalization], predictor, threads)


def _checked(export_dir: Path, entry: dict[str, Any], name: str) -> Path:
    """An artifact's path, after checking it exists and still has the SHA-256 the manifest recorded."""
    path = export_dir / entry["path"]
    if not path.exists():
        raise ExportError(f"{path} ({name}) is listed in {MANIFEST} but missing; re-export the bundle")
    if sha256_of(path) != entry["sha256"]:
        raise ExportError(f"{path} ({name}) changed since export (SHA-256 differs from {MANIFEST}); re-export the "
                          "bundle or restore the file")
    return path


def _label_names(export_dir: Path, artifacts: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    if "labels" in artifacts:
        names = json.loads(_checked(export_dir, artifacts["labels"], "labels").read_text("utf-8"))
    else:
        names = manifest.get("label_names")
    if not isinstance(names, list) or not names:
        raise ExportError(f"{export_dir} records no label names (labels.json or {MANIFEST}); re-export the bundle")
    return [str(name) for name in names]


def check_golden_tokens(path: Path, tokenizer: BertTokenizer, normalize: Callable[[str], str],
                        max_length: int) -> None:
    """Run the app's tokenizer test: every golden case must normalize and tokenize to the recorded ids."""
    for number, case in enumerate(json.loads(path.read_text("utf-8"))["cases"], start=1):
        normalized = normalize(case["text"])
        ids = tokenizer(normalized, truncation=True, max_length=max_length)["input_ids"]
        if normalized != case["normalized"] or list(ids) != case["input_ids"]:
            raise ExportError(f"the tokenizer rebuilt from vocab.txt does not reproduce {path.name} case {number} "
                              f"({case['text'][:20]!r}); the bundle's files do not belong together: re-export it")


def encode(bundle: Bundle, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
    """Token ids ([CLS] ... [SEP], at most ``max_length``, keeping [SEP]) of normalized texts, and which were cut."""
    full = bundle.tokenizer(list(texts))["input_ids"]
    limit = bundle.max_length
    ids = [list(row) if len(row) <= limit else [*row[:limit - 1], row[-1]] for row in full]
    return ids, [len(row) > limit for row in full]


def classify(bundle: Bundle, texts: Sequence[str], batch_size: int = BATCH_SIZE,
             on_batch: Callable[[int], None] | None = None) -> Classified:
    """Class probabilities of ``texts`` (raw), in input order; empty ones (after normalization) are skipped."""
    normalized = [bundle.normalize(text) for text in texts]
    rows = [i for i, text in enumerate(normalized) if text]
    empty = [i for i, text in enumerate(normalized) if not text]
    ids, truncated = encode(bundle, [normalized[i] for i in rows])
    eval_set = EvalSet(ids, [0] * len(ids), int(bundle.tokenizer.pad_token_id or 0))
    logits = []
    with torch_threads(bundle.threads):
        for batch_ids, mask in eval_set.batches(batch_size):
            logits.append(bundle.predictor(batch_ids, mask).astype(np.float64))
            if on_batch is not None:
                on_batch(len(batch_ids))
    stacked = np.concatenate(logits) if logits else np.zeros((0, len(bundle.label_names)))
    probabilities = np.exp(stacked - stacked.max(axis=1, keepdims=True))  # softmax, (rows, num_labels)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return Classified(rows, probabilities, truncated, empty)


def prediction_records(texts: Sequence[str], indices: Sequence[int], probabilities: np.ndarray,
                       label_names: list[str], *, top_k: int = 1, true_labels: Sequence[str | None] | None = None,
                       truncated: Sequence[bool] | None = None,
                       all_probabilities: bool = False) -> list[dict[str, Any]]:
    """One record per prediction: ``index`` (position in the input), ``text``, ``predicted``, ``confidence``,
    ``label`` (the true label, when known), ``truncated``, ``top_k`` and ``probabilities`` (all classes)."""
    if not 1 <= top_k <= len(label_names):
        raise ExportError(f"top_k must be between 1 and the number of labels ({len(label_names)}), got {top_k}")
    order = np.argsort(-probabilities, axis=1, kind="stable")
    records = []
    for position, (index, text) in enumerate(zip(indices, texts, strict=True)):
        best = order[position]
        record: dict[str, Any] = {"index": int(index), "text": text, "predicted": label_names[best[0]],
                                  "confidence": round(float(probabilities[position, best[0]]), 6)}
        if true_labels is not None:
            record["label"] = true_labels[position] if true_labels[position] is not None else ""
        if truncated is not None:
            record["truncated"] = bool(truncated[position])
        if top_k > 1:
            record["top_k"] = [{"label": label_names[i], "confidence": round(float(probabilities[position, i]), 6)}
                               for i in best[:top_k]]
        if all_probabilities:
            record["probabilities"] = {name: round(float(p), 6) for name, p in
                                       zip(label_names, probabilities[position], strict=True)}
        records.append(record)
    return records


def write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    """``.jsonl`` (one record a line) or ``.csv`` (``top_k`` as ``top2``/``top2_confidence``... columns, the first
    being ``predicted``; ``probabilities`` as ``p_<label>`` columns), written atomically."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        return
    if suffix != ".csv":
        raise ExportError(f"output {path} must end in .csv or .jsonl")
    flat = [_flatten(record) for record in records]
    columns = list(flat[0]) if flat else ["index", "text", "predicted", "confidence"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    write_text(path, buffer.getvalue())


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    flat = {key: value for key, value in record.items() if key not in ("top_k", "probabilities")}
    for rank, entry in enumerate(record.get("top_k", [])[1:], start=2):
        flat[f"top{rank}"], flat[f"top{rank}_confidence"] = entry["label"], entry["confidence"]
    for name, probability in record.get("probabilities", {}).items():
        flat[f"p_{name}"] = probability
    return flat
