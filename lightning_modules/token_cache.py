"""Tokenization cached on disk, keyed by tokenizer, max length and the texts, so a second run skips it."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from export.files import atomic_path
from lightning_modules.hub import tokenizer_settings

log = logging.getLogger(__name__)
_CHUNK = 4096


@dataclass
class TokenizedTexts:
    """Variable-length token ids packed flat: example i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: torch.Tensor  # (total_tokens,) int32
    offsets: torch.Tensor  # (n + 1,) int64
    from_cache: bool

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def row(self, index: int) -> torch.Tensor:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    @classmethod
    def from_rows(cls, rows: list[list[int]]) -> TokenizedTexts:
        """Packed from unpadded rows of token ids (e.g. ``export.evaluation.EvalSet.token_ids``)."""
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor([len(row) for row in rows], dtype=torch.int64), 0)
        return cls(torch.tensor([i for row in rows for i in row], dtype=torch.int32), offsets, from_cache=False)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides token ids: class, vocabulary and the whole tokenizing pipeline (lower-casing, accent
    stripping, CJK splitting, pre-tokenizer, WordPiece settings), so a cache entry never serves another tokenizer."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps(tokenizer_settings(tokenizer), sort_keys=True).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        pipeline["model"] = {k: v for k, v in (pipeline.get("model") or {}).items() if k != "vocab"}
        digest.update(json.dumps({k: pipeline.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor",
                                                                "model")}, sort_keys=True).encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    return digest.hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` through the one atomic writer (``export.files.atomic_path``): a crash never leaves a
    half-written file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def tokenize(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    cache_dir: Path | None,
    *,
    tokenizer_key: str | None = None,
    desc: str = "tokenizing",
) -> TokenizedTexts:
    """Token ids (with [CLS]/[SEP], truncated to ``max_length``) for ``texts``, from the disk cache when possible."""
    key = hashlib.sha256(
        f"{tokenizer_key or tokenizer_fingerprint(tokenizer)}|{max_length}|{texts_fingerprint(texts)}".encode()
    ).hexdigest()[:24]
    path = cache_dir / f"tokens-{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            stored = torch.load(path, weights_only=True)
            return TokenizedTexts(stored["ids"], stored["offsets"], from_cache=True)
        except Exception as err:  # a corrupt cache entry is rebuilt, never trusted
            log.warning("ignoring unreadable token cache %s (%s)", path, err)
    lengths: list[int] = []
    chunks: list[torch.Tensor] = []
    for start in tqdm(range(0, len(texts), _CHUNK), desc=desc, unit="chunk", disable=len(texts) < 4 * _CHUNK):
        encoded = tokenizer(list(texts[start : start + _CHUNK]), truncation=True, max_length=max_length)["input_ids"]
        lengths += [len(row) for row in encoded]
        chunks += [torch.tensor(row, dtype=torch.int32) for row in encoded]
    ids = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int32)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    if path is not None:
        atomic_torch_save({"ids": ids, "offsets": offsets}, path)
    return TokenizedTexts(ids, offsets, from_cache=False)
