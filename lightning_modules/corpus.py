"""Reading, normalizing and cleaning labelled text corpora (no tokenization, no torch).

Formats:
- ``nlpcc_char``: ``label<TAB>c h a r s`` (NLPCC 2017); separator spaces are removed, runs of 2+ spaces are
  taken as one real space.
- ``thucnews``: ``title<TAB>class_id`` with class names in a ``class.txt`` (line i = class i).
- ``tnews``: CLUE JSON lines with ``sentence`` and ``label`` (code) / ``label_desc``.
- ``csv`` / ``tsv`` (with a header row) / ``jsonl``: generic, with configurable text and label fields.
- ``lines`` (unlabeled text only): one text a line.
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
from typing import Literal

from lightning_modules.errors import PocketbertError

CorpusFormat = Literal["nlpcc_char", "thucnews", "tnews", "csv", "tsv", "jsonl"]
# Formats read for their text alone (pretraining): any labelled format, or ``lines`` (one text a line).
TextFormat = Literal["lines", "nlpcc_char", "thucnews", "tnews", "csv", "tsv", "jsonl"]
_SPACE_RUN = re.compile(r"\s{2,}")
_WHITESPACE = re.compile(r"\s+")


@dataclass
class Example:
    text: str
    label: str


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
        return "\n".join(lines)


def normalize_text(text: str, *, char_separated: bool = False) -> str:
    """NFKC, NLPCC separator spaces removed (real spaces kept), whitespace collapsed and stripped."""
    text = unicodedata.normalize("NFKC", text)
    if char_separated:
        text = " ".join(part.replace(" ", "") for part in _SPACE_RUN.split(text))
    return _WHITESPACE.sub(" ", text).strip()


def _open_text(path: Path) -> list[str]:
    if not path.is_file():
        raise PocketbertError(
            f"data file not found: {path}; check the data dir (NEWS_DATA_DIR or --data.init_args.data_dir)"
        )
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
        raise PocketbertError(f"data file is empty: {path}")
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
    text_field: str = "text",
    label_field: str = "label",
    class_names: Sequence[str] | None = None,
) -> list[Example]:
    """Rows of ``path`` as (raw text, label name), before normalization and cleaning."""
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
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PocketbertError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
            if text_key not in row:
                raise PocketbertError(f"{path}:{line_no}: no field '{text_key}'; set --data.text_field")
            examples.append(Example(str(row[text_key]), _require_label(path, line_no, row.get(label_key, ""))))
    else:
        reader = csv.DictReader(lines, delimiter="\t" if corpus_format == "tsv" else ",")
        missing = {text_field, label_field} - set(reader.fieldnames or [])
        if missing:
            raise PocketbertError(
                f"{path}: header has no column(s) {sorted(missing)} (has {reader.fieldnames}); "
                "set --data.text_field / --data.label_field"
            )
        for line_no, row in enumerate(reader, start=2):
            examples.append(Example(row[text_field] or "", _require_label(path, line_no, row[label_field] or "")))
    return examples


def read_texts(path: Path, corpus_format: TextFormat, *, text_field: str = "text") -> list[str]:
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
        texts: list[str] = []
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PocketbertError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
            if key not in row:
                raise PocketbertError(f"{path}:{line_no}: no field '{key}'; set text_field")
            texts.append(str(row[key]))
        return texts
    reader = csv.DictReader(lines, delimiter="\t" if corpus_format == "tsv" else ",")
    if text_field not in (reader.fieldnames or []):
        raise PocketbertError(f"{path}: header has no column '{text_field}' (has {reader.fieldnames}); set text_field")
    return [row[text_field] or "" for row in reader]


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
        kept.append(Example(text, example.label))
    report.conflicts = [(text, labels) for text, labels in all_labels.items() if len(labels) > 1]
    report.class_counts = Counter(example.label for example in kept)
    return kept, report


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
