"""Reading, normalizing and cleaning labelled text corpora (no tokenization, no torch).

Formats:
- ``nlpcc_char``: ``label<TAB>c h a r s`` (NLPCC 2017); separator spaces are removed, runs of 2+ spaces are
  taken as one real space.
- ``thucnews``: ``title<TAB>class_id`` with class names in a ``class.txt`` (line i = class i).
- ``tnews``: CLUE JSON lines with ``sentence`` and ``label`` (code) / ``label_desc``.
- ``csv`` / ``tsv``: generic delimited files read with Python's ``csv`` module (quoting rules below), with or without
  a header row; columns by header name or 0-based index.
- ``delimited``: any delimiter string (e.g. Toutiao's ``_!_``), no quoting at all: every occurrence of the
  delimiter splits, and every row must have as many fields as the first.
- ``jsonl``: one JSON object a line, with configurable text and label keys.
- ``lines`` (unlabeled pretraining text only, ``read_corpus_texts``): one text a line.

Quoting in ``csv`` and ``tsv`` (Python's ``csv`` "excel" dialect, as RFC 4180): a field may be enclosed in double
quotes; inside quotes the delimiter, line breaks and ``""`` (one literal quote) are text. A quote inside an unquoted
field is literal (``他说"好"`` stays as is), but a field that *starts* with ``"`` is read as a quoted field
(``"双引号"新闻`` becomes ``双引号新闻``). Files written by ``csv.writer`` or pandas round-trip exactly. For raw files
whose texts may start with a quote and that use no quoting, use ``delimited`` with ``delimiter: "\t"`` (or ``","``).
"""

from __future__ import annotations

import csv
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_modules.errors import PocketbertError

# Formats read for their text alone (pretraining): any labelled format, or ``lines`` (one text a line).
TextFormat = Literal["lines", "nlpcc_char", "thucnews", "tnews", "csv", "tsv", "jsonl"]
CorpusFormat = Literal["nlpcc_char", "thucnews", "tnews", "csv", "tsv", "delimited", "jsonl"]
Column = int | str  # a header name, or a 0-based column index (files without a header row)
RareClasses = Literal["warn", "drop"]
_SPACE_RUN = re.compile(r"\s{2,}")
_WHITESPACE = re.compile(r"\s+")


@dataclass
class Example:
    text: str
    label: str
    original: str = ""  # the text as read from the file, before normalization


@dataclass
class CleaningReport:
    """What cleaning did to one file: counts a user should see before trusting the numbers."""

    source: str
    rows_read: int = 0
    empty_dropped: int = 0
    duplicates_dropped: int = 0
    conflicts: list[tuple[str, list[str]]] = field(default_factory=list)
    outside_whitelist: Counter[str] = field(default_factory=Counter)
    class_counts: Counter[str] = field(default_factory=Counter)
    rare_classes: dict[str, int] = field(default_factory=dict)  # classes under min_rows_per_class: rows
    rare_action: str = ""  # "warn" (kept) or "drop"
    min_rows_per_class: int | None = None

    def summary(self) -> str:
        kept = sum(self.class_counts.values())
        lines = [
            f"{self.source}: read {self.rows_read}, kept {kept}; dropped {self.empty_dropped} empty, "
            f"{self.duplicates_dropped} duplicates, {sum(self.outside_whitelist.values())} outside the label list"
            + (f" {dict(self.outside_whitelist)}" if self.outside_whitelist else "")
        ]
        if self.conflicts:
            shown = "; ".join(f"{text[:20]!r} -> {labels}" for text, labels in self.conflicts[:3])
            lines.append(f"  {len(self.conflicts)} label conflicts (same text, different labels; first kept): {shown}")
        distribution = ", ".join(f"{label} {count}" for label, count in sorted(self.class_counts.items()))
        lines.append(f"  classes: {distribution}")
        if self.rare_classes:
            named = ", ".join(f"{label} {count}" for label, count in sorted(self.rare_classes.items()))
            if self.rare_action == "drop":
                lines.append(f"  dropped {len(self.rare_classes)} class(es) with fewer than {self.min_rows_per_class} "
                             f"rows (min_rows_per_class): {named}")
            else:
                lines.append(f"  warning: {len(self.rare_classes)} class(es) with fewer than {self.min_rows_per_class} "
                             f"rows kept: {named}; their val/test scores rest on a handful of rows (set "
                             "data.init_args.rare_classes: drop to remove them)")
        return "\n".join(lines)


def normalize_text(text: str, *, char_separated: bool = False) -> str:
    """NFKC, NLPCC separator spaces removed (real spaces kept), whitespace collapsed and stripped."""
    text = unicodedata.normalize("NFKC", text)
    if char_separated:
        text = " ".join(part.replace(" ", "") for part in _SPACE_RUN.split(text))
    return _WHITESPACE.sub(" ", text).strip()


DATA_DIR_HINT = "check the data dir (NEWS_DATA_DIR or --data.init_args.data_dir)"


def _open_text(path: Path, what: str = "data file", hint: str = DATA_DIR_HINT) -> list[str]:
    if not path.is_file():
        raise PocketbertError(f"{what} not found: {path}; {hint}")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        raise PocketbertError(
            f"{path}:{line_no}: not valid UTF-8 (byte offset {err.start}); re-encode the file as UTF-8"
        ) from None
    # split on newlines only: str.splitlines() would also break rows at U+2028, U+0085 and friends inside a text
    lines = [line.rstrip("\r") for line in content.split("\n")]
    if not any(line.strip() for line in lines):
        raise PocketbertError(f"{what} is empty: {path}")
    return lines


def _require_label(path: Path, line_no: int, label: str) -> str:
    label = str(label).strip()
    if not label:
        raise PocketbertError(f"{path}:{line_no}: row has no label; fix or remove the row")
    return label


def read_raw(
    path: Path,
    corpus_format: CorpusFormat,
    *,
    text_field: Column = "text",
    label_field: Column = "label",
    class_names: Sequence[str] | None = None,
    delimiter: str | None = None,
    has_header: bool | None = None,
) -> list[Example]:
    """Rows of ``path`` as (raw text, label name), before normalization and cleaning.

    ``delimiter`` is the field separator of ``delimited`` files; ``has_header`` says whether csv/tsv/delimited
    files start with a header row (default: yes when the text and label columns are given by name, no when both
    are indices).
    """
    lines = _open_text(path)
    examples: list[Example] = []
    if corpus_format in ("nlpcc_char", "thucnews"):
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            first, sep, second = line.partition("\t")
            if not sep:
                raise PocketbertError(f"{path}:{line_no}: expected two tab-separated columns, got {line[:40]!r}")
            if corpus_format == "nlpcc_char":
                examples.append(Example(second, _require_label(path, line_no, first)))
            else:
                class_id = _require_label(path, line_no, second)
                if class_names is None or not class_id.isdigit() or int(class_id) >= len(class_names):
                    raise PocketbertError(f"{path}:{line_no}: class id {class_id!r} has no name in the class file")
                examples.append(Example(first, class_names[int(class_id)]))
    elif corpus_format in ("tnews", "jsonl"):
        text_key, label_key = ("sentence", "label_desc") if corpus_format == "tnews" else (text_field, label_field)
        if isinstance(text_key, int) or isinstance(label_key, int):
            raise PocketbertError(f"{path}: jsonl rows are objects: give text_field/label_field as key names, "
                                  "not column indices")
        for line_no, row in json_rows(path, lines, text_key, "set --data.text_field"):
            examples.append(Example(str(row[text_key]), _require_label(path, line_no, row.get(label_key, ""))))
    else:
        rows = delimited_rows(path, lines, corpus_format, delimiter)
        text_index, label_index = column_indices(path, rows, text_field, label_field, has_header)
        for line_no, fields in rows:
            text = fields[text_index] if text_index < len(fields) else ""
            label = fields[label_index] if label_index < len(fields) else ""
            examples.append(Example(text, _require_label(path, line_no, label)))
    return examples


def json_rows(path: Path, lines: list[str], text_key: str, hint: str) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of the non-empty ``lines`` with their line numbers; each must have ``text_key``."""
    rows = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PocketbertError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict) or text_key not in row:
            raise PocketbertError(f"{path}:{line_no}: no field '{text_key}'; {hint}")
        rows.append((line_no, row))
    return rows


def read_corpus_texts(path: Path, corpus_format: TextFormat, *, text_field: str = "text") -> list[str]:
    """The texts of ``path`` alone (unlabeled pretraining text), raw: labels are neither required nor read.
    ``lines`` is one text a line; any labelled format is read for its text column."""
    lines = _open_text(path)
    if corpus_format == "lines":
        return [line for line in lines if line.strip()]
    if corpus_format in ("nlpcc_char", "thucnews"):
        column = 1 if corpus_format == "nlpcc_char" else 0
        return [line.split("\t")[column] if "\t" in line else line for line in lines if line.strip()]
    if corpus_format in ("tnews", "jsonl"):
        key = "sentence" if corpus_format == "tnews" else text_field
        return [str(row[key]) for _, row in json_rows(path, lines, key, "set text_field")]
    reader = csv.DictReader(lines, delimiter="\t" if corpus_format == "tsv" else ",")
    if text_field not in (reader.fieldnames or []):
        raise PocketbertError(f"{path}: header has no column '{text_field}' (has {reader.fieldnames}); set text_field")
    return [row[text_field] or "" for row in reader]
def delimited_rows(path: Path, lines: list[str], corpus_format: str,
                   delimiter: str | None) -> list[tuple[int, list[str]]]:
    """Non-empty rows of a csv/tsv (quoting as in the module docstring) or ``delimited`` file, with line numbers."""
    if corpus_format == "delimited":
        if not delimiter:
            raise PocketbertError("format delimited needs a delimiter (data.init_args.delimiter, e.g. \"_!_\")")
        rows = [(line_no, line.split(delimiter)) for line_no, line in enumerate(lines, start=1) if line.strip()]
        expected = len(rows[0][1]) if rows else 0
        for line_no, fields in rows:
            if len(fields) != expected:
                raise PocketbertError(f"{path}:{line_no}: {len(fields)} fields where the first row has {expected}; a "
                                      f"field may contain the delimiter {delimiter!r}: fix or remove the row")
        return rows
    # csv needs the line breaks back to keep them inside quoted fields
    reader = csv.reader((line + "\n" for line in lines), delimiter="\t" if corpus_format == "tsv" else ",")
    rows = []
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                rows.append((reader.line_num, fields))
    except csv.Error as err:
        raise PocketbertError(f"{path}:{reader.line_num}: {err}; check the quoting") from None
    return rows


def column_indices(path: Path, rows: list[tuple[int, list[str]]], text_field: Column, label_field: Column,
                   has_header: bool | None) -> tuple[int, int]:
    """0-based indices of the text and label columns; removes the header row from ``rows`` when there is one."""
    header = has_header if has_header is not None else isinstance(text_field, str) or isinstance(label_field, str)
    names: list[str] = []
    if header:
        if not rows:
            raise PocketbertError(f"{path}: no header row")
        names = [name.strip() for name in rows.pop(0)[1]]
    indices = []
    for setting, column in (("text_field", text_field), ("label_field", label_field)):
        if isinstance(column, int):
            if column < 0:
                raise PocketbertError(f"{setting} must be a column name or a 0-based index, got {column}")
            indices.append(column)
        elif not header:
            raise PocketbertError(f"{path}: {setting} {column!r} is a column name but the file has no header row "
                                  "(has_header: false); give a 0-based column index")
        elif column not in names:
            raise PocketbertError(f"{path}: header has no column {column!r} (has {names}); set "
                                  f"data.init_args.{setting} to a column name or a 0-based index")
        else:
            indices.append(names.index(column))
    return indices[0], indices[1]


def clean(
    examples: Iterable[Example], source: str, *, char_separated: bool, whitelist: Sequence[str] | None
) -> tuple[list[Example], CleaningReport]:
    """Normalize, drop empty rows and rows outside ``whitelist``, de-duplicate, and report label conflicts."""
    report = CleaningReport(source=source)
    allowed = set(whitelist) if whitelist is not None else None
    first_label: dict[str, str] = {}
    all_labels: dict[str, list[str]] = defaultdict(list)
    kept: list[Example] = []
    for example in examples:
        report.rows_read += 1
        text = normalize_text(example.text, char_separated=char_separated)
        if not text:
            report.empty_dropped += 1
            continue
        if allowed is not None and example.label not in allowed:
            report.outside_whitelist[example.label] += 1
            continue
        if text in first_label:
            report.duplicates_dropped += 1
            if example.label not in all_labels[text]:
                all_labels[text].append(example.label)
            continue
        first_label[text] = example.label
        all_labels[text].append(example.label)
        kept.append(Example(text, example.label, original=example.text))
    report.conflicts = [(text, labels) for text, labels in all_labels.items() if len(labels) > 1]
    report.class_counts = Counter(example.label for example in kept)
    return kept, report


def find_rare_classes(examples: Iterable[Example], min_rows: int | None) -> dict[str, int]:
    """Classes with fewer than ``min_rows`` examples, and their counts (none when ``min_rows`` is None)."""
    if min_rows is None:
        return {}
    counts = Counter(example.label for example in examples)
    return {label: count for label, count in sorted(counts.items()) if count < min_rows}


@dataclass
class TextRows:
    """Texts to classify as read from a file (not normalized), with their true labels when the file has them."""

    texts: list[str]  # one per data row, in file order; "" for an empty row
    line_numbers: list[int]  # the file line each row starts on (for reports)
    labels: list[str | None] | None = None  # the label column's values, when the file has that column


TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")


def read_texts(path: Path, text_column: str = "text", label_column: str | None = "label",
               what: str = "input file") -> TextRows:
    """Texts from ``.txt`` (one a line), ``.csv``/``.tsv`` (header row, quoting as in the module docstring) or
    ``.jsonl`` (one object a line); ``label_column`` is read when present (true labels, e.g. to score)."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise PocketbertError(f"{what} {path} has an unsupported type {suffix or '(none)'}: give .txt (one text a "
                              "line), .csv, .tsv or .jsonl (with a text column)")
    lines = _open_text(path, what, "check the path")
    if suffix == ".txt":
        if lines and lines[-1] == "":
            lines = lines[:-1]  # the final newline ends the last line, it does not start an empty one
        return TextRows(lines, list(range(1, len(lines) + 1)))
    if suffix == ".jsonl":
        return _json_texts(path, lines, text_column, label_column)
    rows = delimited_rows(path, lines, suffix[1:], None)
    names = [name.strip() for name in rows.pop(0)[1]] if rows else []
    if text_column not in names:
        raise PocketbertError(f"{path}: header has no column {text_column!r} (has {names}); name the text column "
                              "with --text_column")
    text_index = names.index(text_column)
    label_index = names.index(label_column) if label_column in names else None
    texts = [fields[text_index] if text_index < len(fields) else "" for _, fields in rows]
    labels = None if label_index is None else [
        (fields[label_index].strip() or None) if label_index < len(fields) else None for _, fields in rows]
    return TextRows(texts, [line_no for line_no, _ in rows], labels)


def _json_texts(path: Path, lines: list[str], text_column: str, label_column: str | None) -> TextRows:
    rows = json_rows(path, lines, text_column, "name the text field with --text_column")
    texts = [str(row[text_column] or "") for _, row in rows]
    line_numbers = [line_no for line_no, _ in rows]
    values = [row.get(label_column) if label_column else None for _, row in rows]
    labels = [str(value).strip() or None if value is not None else None for value in values]
    has_labels = any(label is not None for label in labels)
    return TextRows(texts, line_numbers, labels if has_labels else None)


def stratified_split(
    examples: Sequence[Example], fractions: Sequence[float], seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Split into train/val/test keeping each class's proportions; the same seed gives the same split."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise PocketbertError(f"split fractions must be three positive numbers summing to 1, got {list(fractions)}")
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    train: list[Example] = []
    val: list[Example] = []
    test: list[Example] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_val = round(len(group) * fractions[1])
        n_test = round(len(group) * fractions[2])
        val += group[:n_val]
        test += group[n_val : n_val + n_test]
        train += group[n_val + n_test :]
    for part in (train, val, test):
        rng.shuffle(part)
    return train, val, test


def limit_per_class(examples: Sequence[Example], limit: int, seed: int) -> list[Example]:
    """At most ``limit`` examples of each class, chosen with a fixed seed, in the original order."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        by_label[example.label].append(index)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for indices in by_label.values():
        chosen.update(rng.sample(indices, min(limit, len(indices))))
    return [examples[index] for index in sorted(chosen)]
