"""Unlabeled text for masked-language-model pretraining, kept apart from the downstream task's val and test texts."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from lightning_modules.batching import PadCollator, ResumableSampler, TokenizedDataset
from lightning_modules.corpus import TextFormat, normalize_text, read_corpus_texts
from lightning_modules.datamodule import DATA_DIR_ENV, NewsDataModule
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import load_tokenizer
from lightning_modules.token_cache import tokenize


@dataclass
class TextSource:
    """A file read for its texts only (any labels in it are ignored).

    Args:
        path: The file, relative to the data dir unless absolute.
        format: ``lines`` (one text a line) or any labelled corpus format (``nlpcc_char``, ``thucnews``, ``tnews``,
            ``csv``, ``tsv``, ``jsonl``), read for its text column.
        text_field: Text column/key for ``csv``, ``tsv`` and ``jsonl``.
    """

    path: str
    format: TextFormat = "lines"
    text_field: str = "text"


@dataclass
class PretrainingReport:
    """Where the pretraining text came from and what was held out; written beside the pretrained model."""

    sources: dict[str, int]  # source -> texts read from it
    duplicates_dropped: int
    task_heldout_texts: int  # the task's val + test texts
    heldout_matches_dropped: int  # pretraining texts equal to one of them, removed
    overlap_with_task_heldout: int  # after removal: always 0
    train_texts: int
    validation_texts: int

    def summary(self) -> str:
        read = ", ".join(f"{source} {count}" for source, count in self.sources.items())
        return (f"pretraining text: {self.train_texts} train + {self.validation_texts} validation texts (read: {read}; "
                f"{self.duplicates_dropped} duplicates dropped); the task's {self.task_heldout_texts} val/test texts "
                f"held out: {self.heldout_matches_dropped} exact matches removed, overlap now "
                f"{self.overlap_with_task_heldout}")


class PretrainingDataModule(L.LightningDataModule):
    """Unlabeled texts for ``MaskedLMPretraining``: the downstream task's training texts plus any other files.

    The task's validation and test texts never enter pretraining: every pretraining text equal to one of them
    (after the task's normalization) is removed, and the report states the remaining overlap (0). A small random
    share of the pretraining texts is held out to validate the masked-LM loss.

    Args:
        task: The downstream labelled data (a ``NewsDataModule``, as in the task's recipe): its train split is
            pretraining text, its val and test splits are held out.
        files: More unlabeled text (e.g. your own headlines, one a line); several files at once.
        data_dir: Folder relative file paths are read from; defaults to the task's, else ``NEWS_DATA_DIR``.
        tokenizer: Tokenizer (vocab file, directory or hub name); defaults to the task's, so that the pretrained
            model's vocabulary is the one the task is tokenized with.
        max_length: Longest token sequence; longer texts are truncated.
        batch_size: Training batch size.
        eval_batch_size: Validation batch size (defaults to 2x ``batch_size``).
        validation_fraction: Share of the pretraining texts held out to validate the masked-LM loss.
        seed: Seed of the validation hold-out and of the shuffling.
        num_workers: DataLoader worker processes.
        cache_dir: Where tokenized data is cached; defaults to ``.cache/pocketbert``.
    """

    def __init__(
        self,
        task: NewsDataModule | None = None,
        files: list[TextSource] | None = None,
        data_dir: Path | None = None,
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        validation_fraction: float = 0.02,
        seed: int = 42,
        num_workers: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__()
        if task is None and not files:
            raise PocketbertError("pretraining needs text: give data.init_args.task (the downstream data) and/or files")
        if not 0 < validation_fraction < 0.5:
            raise PocketbertError(f"validation_fraction must be in (0, 0.5), got {validation_fraction}")
        if batch_size < 1 or max_length < 8:
            raise PocketbertError(f"batch_size must be positive and max_length at least 8, got {batch_size}, "
                                  f"{max_length}")
        self.task = task
        self.sources = list(files or [])
        self.data_dir = data_dir
        self.tokenizer_spec = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.cache_dir = cache_dir if cache_dir is not None else Path(".cache/pocketbert")
        self.datasets: dict[str, TokenizedDataset] = {}
        self.texts: dict[str, list[str]] = {}

    # ---- what the CLI links into the model -----------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        return []  # unlabeled: the link exists for classifiers; MaskedLMPretraining ignores it

    @property
    def tokenizer_path(self) -> str:
        if self.tokenizer_spec is None:
            if self.task is None:
                raise PocketbertError("give data.init_args.tokenizer (there is no task to take it from)")
            return self.task.tokenizer_path
        candidate = Path(self.tokenizer_spec).expanduser()
        if candidate.exists():
            return str(candidate.resolve())
        if self.tokenizer_spec.endswith(".txt"):
            return str(self.resolve(self.tokenizer_spec))  # a vocab file under the data dir
        return self.tokenizer_spec  # a hub name

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.tokenizer_path)

    def resolve(self, name: str) -> Path:
        path = Path(name).expanduser()
        if path.is_absolute():
            return path
        if self.data_dir is None and self.task is not None:
            return self.task.resolve(name)
        raw = self.data_dir or os.environ.get(DATA_DIR_ENV)
        if not raw:
            raise PocketbertError(f"no data dir for {name}: set {DATA_DIR_ENV} or pass --data.init_args.data_dir PATH")
        return Path(raw).expanduser().resolve() / path

    # ---- texts ---------------------------------------------------------------------------------------------------
    @cached_property
    def corpus(self) -> tuple[list[str], list[str], PretrainingReport]:
        """(train texts, validation texts, report), deduplicated and without the task's val/test texts."""
        sources: dict[str, list[str]] = {}
        heldout: set[str] = set()
        if self.task is not None:
            splits = self.task.cleaned_splits
            sources["task train split"] = [example.text for example in splits["train"][0]]
            heldout = {example.text for name in ("val", "test") for example in splits[name][0]}
        for source in self.sources:
            path = self.resolve(source.path)
            raw = read_corpus_texts(path, source.format, text_field=source.text_field)
            sources[str(source.path)] = [normalize_text(text, char_separated=source.format == "nlpcc_char")
                                         for text in raw]
        seen: set[str] = set()
        texts: list[str] = []
        duplicates = matches = 0
        for source_texts in sources.values():
            for text in source_texts:
                if not text:
                    continue
                if text in seen:
                    duplicates += 1
                    continue
                seen.add(text)
                if text in heldout:
                    matches += 1
                    continue
                texts.append(text)
        if len(texts) < 10:
            raise PocketbertError(f"only {len(texts)} texts to pretrain on after cleaning; add text files")
        random.Random(self.seed).shuffle(texts)
        n_val = max(1, round(self.validation_fraction * len(texts)))
        train, validation = texts[n_val:], texts[:n_val]
        report = PretrainingReport(
            sources={name: len(values) for name, values in sources.items()}, duplicates_dropped=duplicates,
            task_heldout_texts=len(heldout), heldout_matches_dropped=matches,
            overlap_with_task_heldout=len(heldout.intersection(texts)), train_texts=len(train),
            validation_texts=len(validation))
        return train, validation, report

    @property
    def report(self) -> PretrainingReport:
        return self.corpus[2]

    # ---- Lightning hooks -----------------------------------------------------------------------------------------
    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train, validation, report = self.corpus
        rank_zero_info(report.summary())
        for split, texts in (("train", train), ("val", validation)):
            tokens = tokenize(texts, self.tokenizer, self.max_length, self.cache_dir, desc=f"tokenizing {split}")
            self.datasets[split] = TokenizedDataset(tokens, torch.zeros(len(texts), dtype=torch.long))
            self.texts[split] = texts

    def _loader_kwargs(self) -> dict[str, Any]:
        if not self.datasets:
            self.setup()
        return {"num_workers": self.num_workers, "collate_fn": PadCollator(int(self.tokenizer.pad_token_id or 0)),
                "persistent_workers": self.num_workers > 0,
                "generator": torch.Generator().manual_seed(self.seed)}

    @override
    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        kwargs = self._loader_kwargs()
        tokens = self.datasets["train"].tokens
        sampler = ResumableSampler(len(tokens), self.seed, tokens.offsets[1:] - tokens.offsets[:-1], self.batch_size)
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, sampler=sampler, **kwargs)

    @override
    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        kwargs = self._loader_kwargs()
        return DataLoader(self.datasets["val"], batch_size=self.eval_batch_size, shuffle=False, **kwargs)

    @override
    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self.val_dataloader()  # the CLI's test after fit reports the held-out masked-LM figures
