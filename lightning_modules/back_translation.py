"""Back-translation, the augmentation plug-in that needs translation models: Chinese -> pivot -> Chinese.

No translation model ships with pocketbert and none can be downloaded offline, so this was not measured; the class
checks at construction (when a recipe is parsed) that both models can be loaded: a local directory, the Hugging Face
cache, or a reachable hub. Offline it stops in seconds with one line instead of retrying downloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_modules.errors import PocketbertError
from lightning_modules.hub import hub_reachable, in_hub_cache, names_local_folder


def resolve_translation_model(name_or_path: str, what: str) -> tuple[str, bool]:
    """``(name_or_path, local_files_only)`` for ``from_pretrained``; raises a one-line error when it cannot load."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path), True
    if names_local_folder(name_or_path):
        raise PocketbertError(f"back-translation {what} folder {name_or_path} not found; give a local model directory "
                              "(e.g. a saved Helsinki-NLP/opus-mt-zh-en) or a hub name")
    if in_hub_cache(name_or_path):
        return name_or_path, True
    if not hub_reachable():
        raise PocketbertError(f"cannot load back-translation {what} '{name_or_path}': not a local directory, not in "
                              "the Hugging Face cache, and the hub is unreachable (offline); give a local model "
                              "directory, or use lightning_modules.EdaAugmentation (offline)")
    return name_or_path, False


class BackTranslation:
    """Translate each training headline into a pivot language and back (sampled, so copies differ).

    Args:
        model: Chinese -> pivot sequence-to-sequence model: a local directory or a hub name (e.g.
            ``Helsinki-NLP/opus-mt-zh-en``).
        back_model: Pivot -> Chinese model (e.g. ``Helsinki-NLP/opus-mt-en-zh``).
        copies: Back-translations per training row (sampled with ``top_p``; duplicates are dropped).
        batch_size: Texts per generation batch.
        max_new_tokens: Longest translation, in tokens.
        top_p: Nucleus-sampling mass of both directions (1.0 samples from the whole distribution).
        device: Where the models run (``cpu``, ``cuda``).
        seed: Seed of the sampling.
    """

    def __init__(self, model: str, back_model: str, copies: int = 1, batch_size: int = 32, max_new_tokens: int = 64,
                 top_p: float = 0.9, device: str = "cpu", seed: int = 0) -> None:
        if copies < 1:
            raise PocketbertError(f"back-translation copies must be at least 1, got {copies}")
        if batch_size < 1 or max_new_tokens < 1:
            raise PocketbertError(f"batch_size and max_new_tokens must be positive, got {batch_size} and "
                                  f"{max_new_tokens}")
        if not 0 < top_p <= 1:
            raise PocketbertError(f"top_p must be in (0, 1], got {top_p}")
        self.forward_model = resolve_translation_model(model, "model")  # fails fast offline, before any training
        self.backward_model = resolve_translation_model(back_model, "back_model")
        self.copies = copies
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.top_p = top_p
        self.device = torch.device(device)
        self.seed = seed

    def describe(self) -> str:
        return f"back-translation x{self.copies}: {self.forward_model[0]} -> {self.backward_model[0]}"

    def _load(self, spec: tuple[str, bool]) -> tuple[Any, Any]:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        name, local_only = spec
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        model = AutoModelForSeq2SeqLM.from_pretrained(name, local_files_only=local_only).to(self.device).eval()
        return tokenizer, model

    @torch.no_grad()
    def _translate(self, texts: Sequence[str], tokenizer: Any, model: Any) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(list(texts[start : start + self.batch_size]), return_tensors="pt", padding=True,
                              truncation=True).to(self.device)
            generated = model.generate(**batch, do_sample=True, top_p=self.top_p, max_new_tokens=self.max_new_tokens)
            out += tokenizer.batch_decode(generated, skip_special_tokens=True)
        return out

    def augment(self, texts: Sequence[str]) -> list[list[str]]:
        forward = self._load(self.forward_model)
        backward = self._load(self.backward_model)
        copies: list[list[str]] = [[] for _ in texts]
        for copy in range(self.copies):
            torch.manual_seed(self.seed + copy)
            back = self._translate(self._translate(texts, *forward), *backward)
            for row, text in enumerate(back):
                copies[row].append("".join(text.split()))  # Chinese has no spaces; tokenizers may insert some
        return copies
