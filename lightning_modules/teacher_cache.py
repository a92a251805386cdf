"""The frozen teacher of a distillation run, and its logits cached on disk so that epochs skip its forward pass.

The cache key is (teacher weights and config hash, teacher vocabulary, teacher max length, the texts), so a
retrained teacher, another tokenizer or changed data computes the logits again instead of reusing stale ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm
from transformers import BertTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lightning_modules.checkpoints import load_exportable
from lightning_modules.errors import PocketbertError
from lightning_modules.token_cache import (
    TokenizedTexts,
    atomic_torch_save,
    texts_fingerprint,
    tokenize,
    tokenizer_fingerprint,
)

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A fine-tuned classifier loaded from a pocketbert checkpoint: frozen, in eval mode, never a submodule (so it
    is neither trained, nor moved by Lightning, nor saved in the student's checkpoint)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase  # WordPiece over the vocabulary saved in the teacher's checkpoint
    label_names: list[str]
    max_length: int
    path: Path
    fingerprint: str  # sha256 of the weights, config, labels and vocabulary


def teacher_run_hint(path: Path) -> str:
    """``tb_logs/<name>/latest/best.ckpt`` is written by the recipe ``<name>.yaml``: say to run it."""
    parts = path.parts
    if "tb_logs" in parts and parts.index("tb_logs") + 1 < len(parts):
        return f"python -m recipes fit --config {parts[parts.index('tb_logs') + 1]}.yaml"
    return "the teacher's recipe"


def load_teacher(path: Path) -> Teacher:
    """Load a teacher from a pocketbert checkpoint (``weights_only``), frozen and in eval mode."""
    if not path.is_file():
        raise PocketbertError(f"teacher checkpoint {path} not found: train the teacher first ({teacher_run_hint(path)})"
                              ", or set model.init_args.teacher_checkpoint")
    exportable = load_exportable(path)
    model = exportable.model.eval()
    model.requires_grad_(False)
    digest = hashlib.sha256()
    digest.update(json.dumps([model.config.to_dict(), exportable.label_names, exportable.vocab],
                             sort_keys=True, ensure_ascii=False, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    tokenizer = BertTokenizer(vocab=OrderedDict((token, i) for i, token in enumerate(exportable.vocab)))
    return Teacher(model, tokenizer, exportable.label_names, exportable.max_length, path, digest.hexdigest())


def padded_rows(tokens: TokenizedTexts, indices: Sequence[int] | torch.Tensor, pad_id: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (batch, longest row) of the rows ``indices`` of ``tokens``."""
    rows = [tokens.row(int(i)) for i in indices]
    width = max(row.numel() for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : row.numel()] = row
        attention_mask[i, : row.numel()] = 1
    return input_ids, attention_mask


@torch.no_grad()
def run_teacher(teacher: Teacher, tokens: TokenizedTexts, *, device: torch.device, batch_size: int = 128,
                desc: str = "teacher logits") -> torch.Tensor:
    """Teacher logits (n, num_labels) in fp32 on CPU, batched by length so that little padding is computed."""
    lengths = tokens.offsets[1:] - tokens.offsets[:-1]
    order = torch.argsort(lengths, descending=True)
    logits = torch.empty((len(tokens), len(teacher.label_names)), dtype=torch.float32)
    pad_id = int(teacher.tokenizer.pad_token_id or 0)
    teacher.model.to(device)  # type: ignore[arg-type]
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=len(order) < 8 * batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = padded_rows(tokens, chunk, pad_id)
        output = teacher.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        logits[chunk] = output.logits.float().cpu()
    return logits


def cached_teacher_logits(teacher: Teacher, texts: Sequence[str], tokens: TokenizedTexts, cache_dir: Path | None, *,
                          device: torch.device, batch_size: int = 128) -> tuple[torch.Tensor, bool]:
    """Teacher logits for ``texts`` (tokenized as ``tokens`` with the teacher's vocabulary), and whether they came
    from the disk cache. Computed once per (teacher, vocabulary, max length, texts)."""
    key = hashlib.sha256(
        f"{teacher.fingerprint}|{tokenizer_fingerprint(teacher.tokenizer)}|{teacher.max_length}|"
        f"{texts_fingerprint(texts)}".encode()
    ).hexdigest()[:24]
    path = cache_dir / f"teacher-logits-{key}.pt" if cache_dir is not None else None
    expected = (len(texts), len(teacher.label_names))
    if path is not None and path.exists():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(stored["logits"].shape) == expected:
                return stored["logits"], True
            log.warning("ignoring teacher-logit cache %s with shape %s, expected %s", path,
                        tuple(stored["logits"].shape), expected)
        except Exception as err:  # a corrupt cache entry is recomputed, never trusted
            log.warning("ignoring unreadable teacher-logit cache %s (%s)", path, err)
    logits = run_teacher(teacher, tokens, device=device, batch_size=batch_size)
    if path is not None:
        atomic_torch_save({"logits": logits, "teacher": str(teacher.path), "label_names": teacher.label_names}, path)
    return logits, False


def training_targets(teacher: Teacher, texts: Sequence[str], cache_dir: Path | None, *, use_cache: bool,
                     device: torch.device, batch_size: int = 128) -> tuple[torch.Tensor | None, TokenizedTexts | None]:
    """What a distillation run needs of the teacher for ``texts`` (the training split, by ``index``): with the cache,
    its logits (n, num_labels) on ``device``; without, the texts in the teacher's vocabulary, to run it per batch."""
    tokens = tokenize(texts, teacher.tokenizer, teacher.max_length, cache_dir, desc="tokenizing train for the teacher")
    if not use_cache:
        return None, tokens
    logits, from_cache = cached_teacher_logits(teacher, texts, tokens, cache_dir, device=device, batch_size=batch_size)
    rank_zero_info(f"teacher logits for {len(logits)} training texts {'from cache' if from_cache else 'computed'}")
    return logits.to(device), None
