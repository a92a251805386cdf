"""Batching: token-id datasets, padding to a batch's longest row, and the resumable, length-grouped sampler.

Shared by the DataModules (``NewsDataModule``, ``PretrainingDataModule``) and by the distillation code that builds
batches of its own (the teacher's inputs, re-tokenized evaluation texts): one padding rule everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset, DistributedSampler
from typing_extensions import override

from lightning_modules.token_cache import TokenizedTexts


@runtime_checkable
class TextsData(Protocol):
    """What code that builds batches of its own reads from a DataModule (``NewsDataModule`` has it): each split's
    texts and its dataset in row order (a batch's ``index`` is a row of both), and the folder of its caches."""

    @property
    def texts(self) -> dict[str, list[str]]: ...

    @property
    def datasets(self) -> dict[str, TokenizedDataset]: ...

    @property
    def cache_dir(self) -> Path | None: ...


def pad_rows(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (batch, longest row) of variable-length id ``rows``, padded right."""
    width = max(row.numel() for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (batch, seq)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : row.numel()] = row
        attention_mask[i, : row.numel()] = 1
    return input_ids, attention_mask


def padded_rows(tokens: TokenizedTexts, indices: Sequence[int] | torch.Tensor, pad_id: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (batch, longest row) of the rows ``indices`` of ``tokens``."""
    return pad_rows([tokens.row(int(i)) for i in indices], pad_id)


class TokenizedDataset(Dataset[dict[str, Any]]):
    """Examples as variable-length token ids; ``index`` lets per-example caches (teacher logits) line up."""

    def __init__(self, tokens: TokenizedTexts, labels: torch.Tensor) -> None:
        self.tokens = tokens
        self.labels = labels

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.tokens.row(index), "label": self.labels[index], "index": index}


class PadCollator:
    """Pads a batch to its longest row (headlines are short: padding to max_length would waste 3-5x compute)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_rows([row["input_ids"] for row in rows], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.stack([torch.as_tensor(row["label"]) for row in rows]),
            "index": torch.tensor([row["index"] for row in rows]),
        }


class _Positions(Dataset[int]):
    """``range(size)`` as the dataset ``DistributedSampler`` sizes its shards by (it never reads the rows)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


class ResumableSampler(DistributedSampler[int]):
    """Shuffles with ``seed + epoch`` (its own generator, so the global RNG that drives dropout is untouched) and
    can start an epoch part-way through, so a run resumed mid-epoch sees exactly the batches it had left.

    With ``lengths`` and ``batch_size``, batches are length-grouped: the shuffled order is cut into pools of
    ``batch_size * pool_batches`` examples, each pool is sorted by length and cut into batches, and the batches
    are shuffled. Batches padded to their longest row then carry little padding (on news headlines a random batch
    is padded to 1.5x the mean length), while every epoch still visits the examples in a new random grouping.

    Under DDP (``num_replicas`` > 1) it shards the epoch itself, so Lightning does not wrap it in a
    ``DistributedSampler`` (which would index it by a length the resumed epoch no longer has): the global order is
    grouped into batches of ``batch_size * num_replicas``, padded like ``DistributedSampler`` to a multiple of
    ``num_replicas``, and rank ``r`` takes every ``num_replicas``-th example from ``r`` on, so each rank's batches
    stay length-grouped and every rank runs the same number of batches. A resumed epoch skips the samples this
    rank already trained (``samples_done`` counts one rank's samples). With one process it is the plain order.
    """

    def __init__(self, size: int, seed: int, lengths: torch.Tensor | None = None, batch_size: int = 1,
                 pool_batches: int = 50, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(_Positions(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size = size
        self.lengths = lengths
        self.batch_size = batch_size
        self.group = batch_size * num_replicas  # the examples of one step across all ranks
        self.pool = self.group * pool_batches
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples this rank had seen in it)

    @override
    def set_epoch(self, epoch: int) -> None:  # called by Lightning at every epoch start
        self.epoch = epoch

    def resume(self, epoch: int, samples_done: int) -> None:
        self._resume_at = (epoch, samples_done)

    def order(self) -> list[int]:
        """The epoch's global order (every rank computes the same one)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        if self.lengths is None or self.batch_size < 2:
            return order.tolist()
        batches: list[torch.Tensor] = []
        for start in range(0, self.size, self.pool):
            pool = order[start : start + self.pool]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches += list(pool.split(self.group))
        # the last, possibly short, batch stays last: Lightning counts batches, not rows, when resuming
        full = [batch for batch in batches if len(batch) == self.group]
        short = [batch for batch in batches if len(batch) < self.group]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return torch.cat(shuffled + short).tolist()

    def shard(self) -> list[int]:
        """This rank's part of the epoch: ``num_samples`` indices."""
        order = self.order()
        if self.num_replicas == 1:
            return order
        padding = self.total_size - len(order)
        padded = order + (order * math.ceil(padding / max(1, len(order))))[:padding]
        return padded[self.rank : self.total_size : self.num_replicas]

    @override
    def __iter__(self) -> Iterator[int]:
        shard = self.shard()
        skip = self._resume_at[1] if self._resume_at is not None and self._resume_at[0] == self.epoch else 0
        self._resume_at = None
        yield from shard[skip:]

    @override
    def __len__(self) -> int:
        # the whole epoch's share even when resumed: Lightning counts the batches already done in it
        return self.num_samples
