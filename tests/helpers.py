"""Test-only helpers: the registry of tiny model specs, a quiet CPU Trainer, classes that recipes written by tests
can name by class path, and a tiny teacher trained in-process for the distillation tests."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
from typing_extensions import override

from lightning_modules import EncoderSpec, NewsDataModule, PocketbertError, TextClassifier

# Tiny encoders, one registry for every test (seconds to train; shapes fixed: tests compare measured figures).
TINY_SPECS: dict[str, EncoderSpec] = {
    "bert16": EncoderSpec(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32, max_position_embeddings=64),
    "bert32": EncoderSpec(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=64),
    "bert64": EncoderSpec(num_layers=1, hidden_size=64, num_heads=2, intermediate_size=128,
                          max_position_embeddings=128),
    "mobilebert32": EncoderSpec(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=32, kind="mobilebert",
                                max_position_embeddings=64, embedding_size=16, intra_bottleneck_size=16),
    "teacher32": EncoderSpec(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                             max_position_embeddings=128),
    "student16": EncoderSpec(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32,
                             max_position_embeddings=128),
    "ngram32": EncoderSpec(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=64,
                           ngram_orders=[2], ngram_buckets=3001),
    "ngram32_bigram_trigram": EncoderSpec(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                                          max_position_embeddings=64, ngram_orders=[2, 3], ngram_buckets=4001,
                                          ngram_size=16),
}


def tiny_spec(name: str) -> EncoderSpec:
    """A copy of ``TINY_SPECS[name]`` (a test may change its copy)."""
    spec = TINY_SPECS[name]
    return dataclasses.replace(spec, ngram_orders=list(spec.ngram_orders) if spec.ngram_orders else None)


def cpu_trainer(**overrides: Any) -> L.Trainer:
    """A quiet CPU Trainer for in-process fits: one epoch, no logger, checkpoints, progress bar or summary unless
    ``overrides`` say otherwise."""
    options: dict[str, Any] = {"accelerator": "cpu", "max_epochs": 1, "logger": False, "enable_checkpointing": False,
                               "enable_progress_bar": False, "enable_model_summary": False, **overrides}
    return L.Trainer(**options)


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
    trainer = cpu_trainer(max_epochs=max_epochs, default_root_dir=path.parent)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(path)
    return path


class FailAtFitEnd(L.Callback):
    """Fails at fit end, as a fit-end export that breaks would (after the best checkpoint was saved)."""

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise PocketbertError("fit-end step failed on purpose (tests.helpers.FailAtFitEnd)")
