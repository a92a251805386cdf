"""``python -m recipes data --config RECIPE.yaml``: the cleaning report and the exact train/val/test splits.

Reads the corpus of a recipe's (or a run's ``config.yaml``'s) ``data:`` section exactly as training does (format,
cleaning, label list, ``min_rows_per_class``, the seeded stratified split or the given split files, the golden test
file), prints the cleaning report and writes ``train``/``val``/``test`` as ``.tsv`` (csv quoting, tab-separated,
header ``text label original``) or ``.jsonl``, plus ``labels.txt`` (label names in the model's id order) and
``report.txt``. ``text`` is the normalized text the model saw (what ``python -m recipes classify`` takes), ``label``
the true label and ``original`` the text as it stands in the corpus. The ``.tsv`` files read back as a recipe with
``format: tsv``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from export.files import write_text
from lightning_modules.corpus import Example
from lightning_modules.datamodule import SPLITS
from lightning_modules.errors import PocketbertError
from lightning_modules.runs import resolve_run_path
from recipes.tools.config import instantiate, read_config
from recipes.tools.parser import ToolParser, run_path

COLUMNS = ("text", "label", "original")


def build_parser() -> ToolParser:
    parser = ToolParser(prog="python -m recipes data",
                        description="Print a recipe's data cleaning report and write its train/val/test splits "
                                    "(text as the model saw it, label, original text).")
    parser.add_argument("--config", required=True, help="a recipe name (news16_cpu.yaml) or a run's config.yaml")
    parser.add_argument("--out", type=run_path, help="output folder (default: RUN/data for a run's config.yaml, else "
                        "data_splits/<recipe name>)")
    parser.add_argument("--format", choices=["tsv", "jsonl"], default="tsv", help="split file format (default: tsv)")
    return parser


def default_out(config: str) -> Path:
    path = resolve_run_path(config)
    if path.name == "config.yaml" and (path.parent / "hparams.yaml").is_file():
        return path.parent / "data"
    return Path("data_splits") / Path(config).stem


def split_text(examples: list[Example], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps({"text": e.text, "label": e.label, "original": e.original}, ensure_ascii=False) + "\n"
                       for e in examples)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((e.text, e.label, e.original) for e in examples)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    datamodule: Any = instantiate(read_config(args.config))[0]
    if not hasattr(datamodule, "cleaned_splits"):
        raise PocketbertError(f"{args.config}: the data module {type(datamodule).__name__} has no cleaned splits; "
                              "the data tool reads lightning_modules.NewsDataModule recipes")
    splits = datamodule.cleaned_splits
    label_names: list[str] = datamodule.label_names
    reports = {id(report): report.summary() for _, report in splits.values()}
    overlap = datamodule.overlap_summary() if hasattr(datamodule, "overlap_summary") else []
    report_text = "\n".join([*reports.values(), *overlap])
    print(report_text)
    out: Path = args.out or default_out(args.config)
    known = set(label_names)
    for split in SPLITS:
        examples = [e for e in splits[split][0] if e.label in known]
        path = out / f"{split}.{args.format}"
        write_text(path, split_text(examples, args.format))
        print(f"{split}: {len(examples):,} rows -> {path}")
    write_text(out / "labels.txt", "\n".join(label_names) + "\n")
    write_text(out / "report.txt", report_text + "\n")
    print(f"labels ({len(label_names)}, in the model's id order): {out / 'labels.txt'}; report: {out / 'report.txt'}")
    return 0
