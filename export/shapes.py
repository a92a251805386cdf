"""Core ML input lengths chosen from the data: a fixed length or a set of enumerated lengths.

Core ML compiles a fixed-shape model for one input size, and each of up to 128 ``EnumeratedShapes`` on its own, so
every enumerated length can run on the Neural Engine; a ``RangeDim`` input runs there at its default size only
(other sizes fall back to GPU or CPU). Headlines are short, so a fixed 128-token input pads most calls with 100
tokens of nothing. ``auto`` lengths come from the token lengths of the training split:

- fixed: the smallest power of two that holds 99.9% of the training rows (capped at the model's max length);
- enumerated: the powers of two from the one holding the median row up to the max length (``32/64/128`` for
  news16); the app runs each text at the smallest length that holds it.

Before iOS 18 Core ML accepts one enumerated input, and the classifier has two (``input_ids``,
``attention_mask``), so enumerated lengths need ``minimum_deployment_target: iOS18``.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from typing import Any, Literal

import numpy as np

from export.coreml import IOS18_TARGETS
from export.errors import ExportError
from export.evaluation import EvalSet
from export.graph import MIN_SEQUENCE

Auto = Literal["auto"]
ENUMERATED_TARGETS = IOS18_TARGETS  # Core ML accepts several enumerated inputs from these on
FIXED_COVERAGE = 0.999
MAX_ENUMERATED = 128  # Core ML's limit on enumerated shapes


def power_of_two_at_least(value: float, max_length: int) -> int:
    length = 1
    while length < value:
        length *= 2
    return max(MIN_SEQUENCE, min(length, max_length))


def auto_fixed_length(lengths: np.ndarray, max_length: int) -> int:
    """The smallest power of two holding ``FIXED_COVERAGE`` of ``lengths`` (tokens per row), at most max_length."""
    return power_of_two_at_least(float(np.quantile(lengths, FIXED_COVERAGE, method="higher")), max_length)


def auto_enumerated_lengths(lengths: np.ndarray, max_length: int) -> list[int]:
    """Powers of two from the one holding the median row up to ``max_length`` (which is always included)."""
    first = power_of_two_at_least(float(np.median(lengths)), max_length)
    chosen = [first]
    while chosen[-1] * 2 < max_length:
        chosen.append(chosen[-1] * 2)
    return sorted({*chosen, max_length})


def check_lengths(lengths: list[int], max_length: int) -> list[int]:
    """Sorted, unique, each in [MIN_SEQUENCE, max_length]; a one-line error otherwise."""
    if not lengths or len(lengths) > MAX_ENUMERATED:
        raise ExportError(f"CoreMLExport enumerated_lengths must list 1 to {MAX_ENUMERATED} lengths, got {lengths}")
    bad = [length for length in lengths if not MIN_SEQUENCE <= length <= max_length]
    if bad:
        raise ExportError(f"CoreMLExport enumerated_lengths {bad} are outside [{MIN_SEQUENCE}, the model's max length "
                          f"{max_length}]")
    return sorted(set(lengths))


def bucket(length: int, lengths: list[int]) -> int:
    """The smallest of the sorted ``lengths`` that holds a row of ``length`` tokens (the largest if none does)."""
    return lengths[min(bisect.bisect_left(lengths, length), len(lengths) - 1)]


def length_stats(lengths: np.ndarray, source: str) -> dict[str, Any]:
    """Percentiles of token lengths and where they came from (recorded with the choice)."""
    return {"source": source, "rows": len(lengths), "mean": float(lengths.mean()),
            "percentiles": {str(q): int(np.percentile(lengths, q, method="higher")) for q in (50, 90, 99, 99.9, 100)}}


def routing(eval_set: EvalSet, lengths: list[int]) -> dict[str, Any]:
    """How the test rows spread over the enumerated (or fixed) lengths, and how many are cut."""
    rows = [len(row) for row in eval_set.token_ids]
    counts = Counter(bucket(length, lengths) for length in rows)
    return {"share_by_length": {str(length): counts[length] / len(rows) for length in lengths},
            "truncated_share": sum(length > lengths[-1] for length in rows) / len(rows),
            "mean_tokens_run": float(np.mean([bucket(length, lengths) for length in rows])),
            "mean_tokens_real": float(np.mean(rows))}


def training_lengths(tokenizer: Any, train_texts: list[str], max_length: int, eval_set: EvalSet,
                     sample: int = 5000) -> tuple[np.ndarray, str]:
    """Token lengths of (a fixed sample of) the training texts in the shipped tokenizer; the test set's when the
    training texts are not at hand."""
    if not train_texts:
        return np.asarray([len(row) for row in eval_set.token_ids]), "test split (no training texts given)"
    texts = train_texts if len(train_texts) <= sample else random.Random(0).sample(train_texts, sample)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return np.asarray([len(ids) for ids in encoded]), f"training split ({len(texts)} of {len(train_texts)} rows)"


def resolve(sequence_length: int | Auto | None, enumerated: list[int] | Auto | None, max_length: int,
            lengths: np.ndarray | None) -> tuple[int, list[int] | None]:
    """The fixed (or largest) input length and the enumerated lengths, with ``auto`` chosen from ``lengths``."""
    if enumerated is not None:
        if enumerated == "auto":
            if lengths is None:
                raise ExportError("enumerated_lengths: auto needs the training split's token lengths")
            chosen = auto_enumerated_lengths(lengths, max_length)
        else:
            chosen = check_lengths(list(enumerated), max_length)
        return chosen[-1], chosen
    if sequence_length == "auto":
        if lengths is None:
            raise ExportError("sequence_length: auto needs the training split's token lengths")
        return auto_fixed_length(lengths, max_length), None
    return (sequence_length or max_length), None
