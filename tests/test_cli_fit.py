"""End-to-end: a recipe fitted through the CLI on a slice of real data clears an accuracy floor."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.files import write_text
from recipes.__main__ import main
from tests.conftest import REPO
from tests.helpers import SMALL_TEACHER_ARGS

FOUR_CLASSES = "[sports,finance,car,game]"


def test_cli_fit_on_real_slice_beats_chance(tmp_path: Path) -> None:
    code = main([
        "fit", "--config", "news16_cpu.yaml",
        "--data.init_args.labels", FOUR_CLASSES,
        "--data.init_args.limit_per_class", "300",
        "--data.init_args.cache_dir", str(tmp_path / "cache"),
        *SMALL_TEACHER_ARGS,
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "tb_logs"),
    ])
    assert code == 0
    run_dir = tmp_path / "tb_logs" / "news16_cpu" / "version_0"
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    # 4 classes: chance is 0.25. A from-scratch model on 840 real headlines should be far above it.
    assert metrics["test_acc"] > 0.6, metrics
    assert metrics["test_macro_f1"] > 0.55, metrics
    assert Path(metrics["best_checkpoint"]).is_file()
    latest_best = tmp_path / "tb_logs" / "news16_cpu" / "latest" / "best.ckpt"
    assert latest_best.resolve() == Path(metrics["best_checkpoint"]).resolve()
    assert (run_dir / "config.yaml").is_file() and list(run_dir.glob("events.out.tfevents.*"))


def test_hub_recipe_fails_fast_offline() -> None:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recipes", "fit", "--config", "news16.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**_env(), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: cannot download") and "news16_cpu.yaml" in last_line
    assert time.perf_counter() - start < 60  # mostly interpreter and import start-up; no 50 s hub retries


def test_metrics_file_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "test_metrics.json"
    write_text(path, '{"test_acc": 0.5}\n')
    write_text(path, '{"test_acc": 0.75}\n')  # replaces the old file
    assert json.loads(path.read_text()) == {"test_acc": 0.75}
    assert path.stat().st_mode & 0o777 == 0o644
    # a write that fails midway (a lone surrogate cannot be encoded) leaves the previous file whole and no temp file
    with pytest.raises(UnicodeEncodeError):
        write_text(path, '{"test_acc": 0.9, "note": "\ud800"}\n')
    assert json.loads(path.read_text()) == {"test_acc": 0.75}
    assert [p.name for p in tmp_path.iterdir()] == ["test_metrics.json"]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
