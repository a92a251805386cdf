"""The frozen teacher of a distillation run, and its logits cached on disk so that epochs skip its forward pass.

The cache key is (teacher weights and config hash, teacher vocabulary, teacher max length, the texts), so a
retrained teacher, another tokenizer or changed data computes the logits again instead of reusing stale ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_modules.batching import padded_rows
from lightning_modules.checkpoints import load_exportable
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import WORDPIECE_CLASSES, run_hint, vocab_tokens, wordpiece_tokenizer
from lightning_modules.runs import resolve_run_path
from lightning_modules.token_cache import (
    TokenizedTexts,
    atomic_torch_save,
    texts_fingerprint,
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
    fingerprint: str  # sha256 of the weights, config, labels, vocabulary and tokenizer settings

    def to(self, device: torch.device) -> Teacher:
        """Move the teacher's model to ``device`` (Lightning never moves it: it is no submodule of the student)."""
        torch.nn.Module.to(self.model, device)
        return self


def existing_checkpoint(path: Path) -> Path:
    """The teacher checkpoint ``path`` names (a ``latest`` pointer resolved to its run: the checkpoint records the
    real path), or a one-line error saying which recipe writes it."""
    path = resolve_run_path(path)
    if not path.is_file():
        raise PocketbertError(f"teacher checkpoint {path} not found: train the teacher first ({run_hint(path)})"
                              ", or point the teacher at an existing checkpoint")
    return path


def load_teacher(path: Path) -> Teacher:
    """Load a teacher from a pocketbert checkpoint (``weights_only``), frozen and in eval mode."""
    path = existing_checkpoint(path)
    exportable = load_exportable(path)
    model = exportable.model.eval()
    model.requires_grad_(False)
    digest = hashlib.sha256()
    described: list[Any] = [model.config.to_dict(), exportable.label_names, exportable.vocab]
    if exportable.tokenizer_settings is not None:  # absent from older checkpoints: their fingerprints stay the same
        described.append(exportable.tokenizer_settings)
    digest.update(json.dumps(described, sort_keys=True, ensure_ascii=False, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    settings = exportable.tokenizer_settings or {}
    if settings.get("class", "BertTokenizer") not in WORDPIECE_CLASSES:
        raise PocketbertError(f"the teacher {path} was trained with a {settings['class']} tokenizer; distillation "
                              "rebuilds a teacher's tokenizer as WordPiece from its saved vocabulary, which would give "
                              "it other ids; train the teacher with a WordPiece (BERT) tokenizer")
    tokenizer = wordpiece_tokenizer(exportable.vocab, settings)
    return Teacher(model, tokenizer, exportable.label_names, exportable.max_length, path, digest.hexdigest())


@torch.no_grad()
def run_teacher(teacher: Teacher, tokens: TokenizedTexts, *, device: torch.device, batch_size: int = 128,
                desc: str = "teacher logits") -> torch.Tensor:
    """Teacher logits (n, num_labels) in fp32 on CPU, batched by length so that little padding is computed."""
    lengths = tokens.offsets[1:] - tokens.offsets[:-1]
    order = torch.argsort(lengths, descending=True)
    logits = torch.empty((len(tokens), len(teacher.label_names)), dtype=torch.float32)
    pad_id = int(teacher.tokenizer.pad_token_id or 0)
    teacher.to(device)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=len(order) < 8 * batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = padded_rows(tokens, chunk, pad_id)
        output = teacher.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        logits[chunk] = output.logits.float().cpu()
    return logits


def load_matching_teacher(path: Path | None, label_names: list[str]) -> tuple[Teacher | None, Path | None]:
    """The teacher of ``path`` (checked to have ``label_names``), or ``(None, path)`` when the file is missing: only
    fitting needs it (a trained student is tested, predicted and exported without it, its hyperparameters still
    naming it), so a missing teacher is an error when fit starts, not when the student is built."""
    if path is None:
        return None, None
    if not Path(path).is_file():
        return None, Path(path)
    with torch.random.fork_rng(devices=[]):  # building the teacher must not shift the student's random init
        teacher = load_teacher(Path(path))
    if teacher.label_names != label_names:
        raise PocketbertError(f"the teacher {path} was trained on labels {teacher.label_names} but the data has "
                              f"{label_names}; give the data the teacher's label list (data.init_args.labels) or "
                              "train a matching teacher")
    return teacher, None


@torch.no_grad()
def teacher_batch_outputs(teacher: Teacher, batch: dict[str, torch.Tensor], tokens: TokenizedTexts | None, *,
                          hidden_states: bool, device: torch.device
                          ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """The teacher run on one training batch (no logit cache): logits (batch, num_labels), plus its hidden states
    with ``hidden_states`` (it then reads the student's ids: ``layer_map`` needs a shared vocabulary). Otherwise it
    reads the batch's rows of ``tokens``, the training texts in its own vocabulary."""
    if hidden_states:
        output = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True)
        return output.logits, output.hidden_states
    if tokens is None:
        raise PocketbertError("the teacher's inputs are not prepared: train with trainer.fit(datamodule=...)")
    input_ids, attention_mask = padded_rows(tokens, batch["index"].tolist(), int(teacher.tokenizer.pad_token_id or 0))
    return teacher.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits, None


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


def check_layer_map(layer_map: dict[int, int], student_config: Any, teacher: Teacher,
                    student_tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """Hidden-state matching needs layers that exist, a shared vocabulary and enough teacher positions."""
    student_layers = int(student_config.num_hidden_layers)
    teacher_layers = int(teacher.model.config.num_hidden_layers)
    for s, t in layer_map.items():
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise PocketbertError(f"layer_map {s}: {t} is out of range: the student has layers 0..{student_layers}"
                                  f" and the teacher 0..{teacher_layers} (0 = embeddings)")
    if vocab_tokens(teacher.tokenizer) != vocab_tokens(student_tokenizer):
        raise PocketbertError("layer_map (hidden-state matching) needs the teacher to use the student's "
                              "tokenizer, so that token positions line up; remove layer_map or use its vocab")
    if int(teacher.model.config.max_position_embeddings) < max_length:
        raise PocketbertError(f"the teacher covers {teacher.model.config.max_position_embeddings} positions but "
                              f"max_length is {max_length}; lower data.init_args.max_length")


def check_same_teachers(saved: dict[str, Any], current: list[str]) -> None:
    """Resuming a student's fit continues the distillation its checkpoint was part of: ``saved`` (the checkpoint's
    ``distillation`` record) must name the teachers whose fingerprints are ``current``, or the student would mix two
    teachers' targets without any sign of it."""
    recorded = saved.get("teacher_fingerprints")
    if recorded is None:  # written before every teacher was recorded: the main teacher's fingerprint alone
        recorded = [saved["teacher_fingerprint"]] if saved.get("teacher_fingerprint") else []
        current = current[:1] if recorded else []
    if list(recorded) != list(current):
        was = saved.get("teacher") or "its teachers"
        raise PocketbertError(f"the teacher changed since this student checkpoint was written (distilled from {was}, "
                              f"fingerprint {', '.join(f[:12] for f in recorded) or 'none'}; now "
                              f"{', '.join(f[:12] for f in current) or 'none'}); resume with the teacher it was "
                              "distilled from, or start a new fit without --ckpt_path")
