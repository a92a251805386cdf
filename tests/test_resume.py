"""A fit killed with SIGKILL mid-epoch resumes with --ckpt_path last and ends exactly where an uninterrupted run
ends; two runs with the same seed give the same metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from recipes import CONFIGS_DIR
from recipes.__main__ import main
from tests.conftest import REPO


def write_recipe(tmp_path: Path, save_dir: Path, kill_at_step: int | None = None) -> Path:
    config = yaml.safe_load((CONFIGS_DIR / "news16_cpu.yaml").read_text("utf-8"))
    config["trainer"].update(max_epochs=2, enable_progress_bar=False, enable_model_summary=False)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(save_dir)
    config["trainer"]["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"monitor": "val_macro_f1", "mode": "max"}},
        # a mid-epoch "last" checkpoint every 3 steps: what a crash resumes from
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 3, "save_last": True, "save_top_k": 0}},
    ]
    if kill_at_step is not None:
        config["trainer"]["callbacks"].append(
            {"class_path": "tests.helpers.KillAtStep", "init_args": {"step": kill_at_step}})
    config["model"]["init_args"].update(
        architecture={"num_layers": 1, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128,
                      "max_position_embeddings": 128},
        learning_rate=3e-3, warmup_ratio=0.1)
    config["data"]["init_args"].update(labels=["sports", "finance", "car", "game"], limit_per_class=60,
                                       batch_size=8, cache_dir=str(tmp_path / "cache"))
    path = tmp_path / f"recipe_{save_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def run_metrics(save_dir: Path) -> dict[str, float]:
    runs = sorted((save_dir / "news16_cpu").glob("version_*/test_metrics.json"))
    metrics = json.loads(runs[-1].read_text())
    return {k: v for k, v in metrics.items() if k != "best_checkpoint"}


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    assert main(["fit", "--config", str(write_recipe(tmp_path, straight))]) == 0
    again = tmp_path / "again"
    assert main(["fit", "--config", str(write_recipe(tmp_path, again))]) == 0
    assert run_metrics(again) == run_metrics(straight)  # same seed, same numbers

    crashed = tmp_path / "crashed"
    killed = subprocess.run(
        [sys.executable, "-m", "recipes", "fit", "--config", str(write_recipe(tmp_path, crashed, kill_at_step=7))],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not list(crashed.glob("news16_cpu/*/test_metrics.json"))
    last = next(crashed.glob("news16_cpu/version_0/checkpoints/last.ckpt"))
    import torch

    state = torch.load(last, weights_only=True, map_location="cpu")
    assert state["global_step"] == 6  # mid-epoch 0 (21 batches an epoch)

    resumed = main(["fit", "--config", str(write_recipe(tmp_path, crashed)), "--ckpt_path", "last"])
    assert resumed == 0
    assert run_metrics(crashed) == run_metrics(straight)
