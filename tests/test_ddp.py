"""DDP on CPU (gloo, 2 processes): training runs, and test metrics are synced across ranks, i.e. equal to a
single-process evaluation of the same checkpoint over the whole test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from lightning_modules import NewsDataModule, TextClassifier
from tests.conftest import REPO

DATA_ARGS = {"labels": ["sports", "finance", "car", "game"], "limit_per_class": 100, "batch_size": 4}


def test_ddp_fit_syncs_metrics_across_ranks(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    command = [
        sys.executable, "-m", "recipes", "fit", "--config", "news16_cpu.yaml",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "4",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "tb_logs"),
        "--data.init_args.labels", "[sports,finance,car,game]", "--data.init_args.limit_per_class", "100",
        "--data.init_args.batch_size", "4", "--data.init_args.cache_dir", str(cache),
        "--model.init_args.architecture.num_layers", "1", "--model.init_args.architecture.hidden_size", "64",
        "--model.init_args.architecture.num_heads", "2", "--model.init_args.architecture.intermediate_size", "128",
        "--model.init_args.learning_rate", "3e-3", "--model.init_args.warmup_ratio", "0.1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr + done.stdout
    assert "All distributed processes registered. Starting with 2 processes" in done.stderr + done.stdout
    metrics = json.loads(next(tmp_path.glob("tb_logs/news16_cpu/version_0/test_metrics.json")).read_text())

    # the same checkpoint, evaluated by one process over the whole test split (60 rows: no DistributedSampler padding)
    data = NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", cache_dir=cache, **DATA_ARGS)  # type: ignore[arg-type]
    model = TextClassifier.load_from_checkpoint(metrics["best_checkpoint"], weights_only=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = trainer.test(model, datamodule=data, verbose=False)[0]
    assert len(data.datasets["test"]) % 2 == 0
    assert metrics["test_acc"] == pytest.approx(single["test_acc"], abs=1e-6)
    assert metrics["test_macro_f1"] == pytest.approx(single["test_macro_f1"], abs=1e-6)
    assert metrics["test_acc"] > 0.5  # learned: chance is 0.25
