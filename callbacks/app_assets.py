"""Fit-end app bundle files: the vocabulary, the label names and golden token ids for the app's tokenizer tests."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from callbacks.context import export_context
from export import ExportContext, ExportError, write_app_assets


class AppAssets(Callback):
    """At fit end, write ``vocab.txt``, ``labels.json``, ``golden_tokens.json`` and ``monitoring_baseline.json`` into
    ``<log_dir>/export/``.

    ``vocab.txt`` is exactly the shipped model's vocabulary in id order; ``golden_tokens.json`` holds the token ids
    our tokenizer gives for tricky edge cases and sample headlines, so the app's Swift tokenizer can be unit-tested;
    ``monitoring_baseline.json`` is the predicted-class distribution on the test set that
    ``python -m recipes drift`` compares field predictions with.

    Args:
        golden_texts: Sentences for the golden file besides the built-in edge cases; default: test headlines.
        golden_samples: How many test headlines to include when ``golden_texts`` is not given.
    """

    def __init__(self, golden_texts: list[str] | None = None, golden_samples: int = 16) -> None:
        if golden_samples < 0:
            raise ExportError(f"AppAssets golden_samples must be 0 or more, got {golden_samples}")
        if golden_texts is not None and not all(text.strip() for text in golden_texts):
            raise ExportError("AppAssets golden_texts has an empty sentence; remove it")
        self.golden_texts = golden_texts
        self.golden_samples = golden_samples

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            self.export(export_context(trainer, pl_module))

    def export(self, context: ExportContext) -> None:
        write_app_assets(context, golden_texts=self.golden_texts, samples=self.golden_samples)
