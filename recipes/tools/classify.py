"""``python -m recipes classify --run RUN_DIR --input FILE``: classify new texts with a shipped variant.

Runs the export bundle the way an app does (its ``vocab.txt``, normalization, max length and model file; see
:mod:`export.inference`), shows progress and throughput, reports empty and truncated inputs, scores the
predictions when the input has a ``label`` column, and writes CSV or JSON lines that ``python -m recipes drift``
reads as they are.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from export.evaluation import accuracy_and_macro_f1
from export.inference import BATCH_SIZE, VARIANTS, Bundle, classify, load_bundle, prediction_records, write_predictions
from lightning_modules.corpus import read_texts
from lightning_modules.errors import PocketbertError
from recipes.tools.parser import ToolParser, run_path

OUTPUT_SUFFIXES = (".csv", ".jsonl")
PROGRESS_SECONDS = 10.0  # when stderr is not a terminal: a progress line this often


def build_parser() -> ToolParser:
    parser = ToolParser(prog="python -m recipes classify",
                        description="Classify texts with an exported model as an app runs it (the bundle's vocab.txt, "
                                    "normalization and model file) and write the predictions as CSV or JSON lines.")
    parser.add_argument("--run", required=True, type=run_path,
                        help="a run folder with export/ (e.g. tb_logs/news16_distill_cpu/latest) or the export folder")
    parser.add_argument("--input", required=True, type=run_path,
                        help=".txt (one text a line), or .csv/.tsv/.jsonl with a text column (a label column, if "
                             "present, is passed through and scored)")
    parser.add_argument("--variant", choices=VARIANTS,
                        help="model file to run (default: the variant benchmark.json marks as shipped)")
    parser.add_argument("--output", type=run_path,
                        help="predictions file, .csv or .jsonl (default: RUN/classify/<input name>.<variant>.csv)")
    parser.add_argument("--top_k", "--top-k", type=int, default=1, help="also list the K most likely labels")
    parser.add_argument("--text_column", "--text-column", default="text", help="text column/key (default: text)")
    parser.add_argument("--label_column", "--label-column", default="label",
                        help="true-label column/key, used when present (default: label)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=BATCH_SIZE,
                        help="texts per model call (default: %(default)s, as the export checks and benchmark)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the runtime (default: 1, as the "
                        "benchmark)")
    return parser


class Progress:
    """A tqdm bar on a terminal; in a file, a line every ``PROGRESS_SECONDS`` with the rate so far."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start, self.last = total, 0, time.perf_counter(), time.perf_counter()
        self.bar = tqdm(total=total, unit="text", desc="classify") if sys.stderr.isatty() else None

    def __call__(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
        elif time.perf_counter() - self.last >= PROGRESS_SECONDS:
            self.last = time.perf_counter()
            rate = self.done / (self.last - self.start)
            print(f"classify: {self.done:,}/{self.total:,} texts ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.start


def lines_of(positions: list[int], line_numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(line_numbers[i]) for i in positions[:limit])
    return f"line{'s' if len(positions) > 1 else ''} {shown}{', ...' if len(positions) > limit else ''}"


def score(bundle: Bundle, probabilities: np.ndarray, true_labels: list[str | None], column: str) -> None:
    """Print accuracy and macro-F1 over the rows whose true label the model knows."""
    index = {name: i for i, name in enumerate(bundle.label_names)}
    known = [i for i, label in enumerate(true_labels) if label in index]
    unknown = sorted({label for label in true_labels if label is not None and label not in index})
    if unknown:
        print(f"{sum(label in unknown for label in true_labels):,} rows have labels the model does not know "
              f"({', '.join(unknown[:5])}); not scored")
    if known:
        known_labels = [index[label] for label in true_labels if label is not None and label in index]
        figures = accuracy_and_macro_f1(probabilities[known], known_labels, len(bundle.label_names))
        print(f"accuracy {figures['accuracy']:.4f}   macro-F1 {figures['macro_f1']:.4f}   on {len(known):,} rows "
              f"labelled in column '{column}'")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1 or args.threads < 1:
        raise PocketbertError(f"--top_k, --batch_size and --threads must be positive, got {args.top_k}, "
                              f"{args.batch_size}, {args.threads}")
    if args.output is not None and args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise PocketbertError(f"--output {args.output} must end in .csv or .jsonl")
    rows = read_texts(args.input, args.text_column, args.label_column)
    bundle = load_bundle(args.run, args.variant, args.threads)
    if args.top_k > len(bundle.label_names):
        raise PocketbertError(f"--top_k {args.top_k} exceeds the model's {len(bundle.label_names)} labels")
    print(f"classify: {bundle.variant} ({bundle.why}): {bundle.model_path}; vocab.txt {len(bundle.tokenizer):,} "
          f"tokens, max length {bundle.max_length}, {len(bundle.label_names)} labels", flush=True)
    non_empty = sum(1 for text in rows.texts if bundle.normalize(text))
    if not non_empty:
        raise PocketbertError(f"{args.input} has no non-empty text in {len(rows.texts)} rows")
    progress = Progress(non_empty)
    result = classify(bundle, rows.texts, args.batch_size, on_batch=progress)
    seconds = progress.close()
    print(f"classified {len(result.rows):,} texts in {seconds:.1f} s ({len(result.rows) / max(seconds, 1e-9):,.0f} "
          f"texts/s; batch {args.batch_size}, {args.threads} thread{'s' if args.threads > 1 else ''})")
    if result.empty:
        print(f"skipped {len(result.empty)} empty row(s): {lines_of(result.empty, rows.line_numbers)}")
    cut = [result.rows[i] for i, flag in enumerate(result.truncated) if flag]
    if cut:
        print(f"{len(cut)} text(s) longer than {bundle.max_length} tokens were truncated (their ends were not read): "
              f"{lines_of(cut, rows.line_numbers)}")
    true_labels = [rows.labels[i] for i in result.rows] if rows.labels is not None else None
    if true_labels is not None:
        score(bundle, result.probabilities, true_labels, args.label_column)
    records = prediction_records([rows.texts[i] for i in result.rows], result.rows, result.probabilities,
                                 bundle.label_names, top_k=args.top_k, true_labels=true_labels,
                                 truncated=result.truncated)
    output: Path = args.output or args.run / "classify" / f"{args.input.stem}.{bundle.variant}.csv"
    write_predictions(output, records)
    print(f"predictions: {output}  (check drift: python -m recipes drift --baseline {args.run} --predictions {output})")
    return 0
