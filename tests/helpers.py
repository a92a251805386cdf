"""Test-only helpers: classes that recipes written by tests can name by class path, and a tiny teacher trained
in-process for the distillation tests."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
from typing_extensions import override

from lightning_modules import EncoderSpec, NewsDataModule, PocketbertError, TextClassifier

# CLI overrides that make news16_cpu.yaml's teacher small enough for tests on a 4-class, 300-per-class slice.
SMALL_TEACHER_ARGS = [
    "--model.init_args.architecture.num_layers", "2",
    "--model.init_args.architecture.hidden_size", "128",
    "--model.init_args.architecture.num_heads", "2",
    "--model.init_args.architecture.intermediate_size", "256",
    "--model.init_args.learning_rate", "2e-3",
    "--trainer.max_epochs", "4",
]


class KillAtStep(L.Callback):
    """SIGKILLs its own process after ``step`` optimizer steps: a crash with no chance to clean up.

    Args:
        step: Global step after which the process dies.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_end(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train_tiny_teacher(path: Path, spec: EncoderSpec, *, labels: list[str], limit_per_class: int, batch_size: int,
                       max_epochs: int, cache_dir: Path, learning_rate: float = 3e-3) -> Path:
    """Fit a from-scratch teacher (seed 0) on a slice of the real NLPCC headlines and save its checkpoint at
    ``path``."""
    L.seed_everything(0)
    data = NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=labels, limit_per_class=limit_per_class,
                          batch_size=batch_size, cache_dir=cache_dir)
    model = TextClassifier(label_names=data.label_names, tokenizer=data.tokenizer_path, architecture=spec,
                           learning_rate=learning_rate)
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(path)
    return path


class FailAtFitEnd(L.Callback):
    """Fails at fit end, as a fit-end export that breaks would (after the best checkpoint was saved)."""

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise PocketbertError("fit-end step failed on purpose (tests.helpers.FailAtFitEnd)")
