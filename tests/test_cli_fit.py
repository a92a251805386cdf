"""End-to-end: a recipe fitted through the CLI on a slice of real data clears an accuracy floor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.files import write_text
from lightning_modules.runs import resolve_run_path
from recipes.__main__ import main
from tests.conftest import NEWS16, REPO
from tests.helpers import SMALL_TEACHER_ARGS

FOUR_CLASSES = "[sports,finance,car,game]"
TINY = ["--model.init_args.architecture.num_layers", "1", "--model.init_args.architecture.hidden_size", "32",
        "--model.init_args.architecture.num_heads", "2", "--model.init_args.architecture.intermediate_size", "64"]


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
    latest_best = resolve_run_path(tmp_path / "tb_logs" / "news16_cpu" / "latest" / "best.ckpt")
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


PROGRESS_LINE = re.compile(
    r"^epoch \d/2  step \d+/(\d+) \(\d+%\)  loss \d+\.\d{4}  elapsed \d:\d\d:\d\d  ETA \d:\d\d:\d\d$", re.MULTILINE)


def test_fit_into_a_file_shows_progress_lines_while_it_runs(tmp_path: Path) -> None:
    """README's command as written (no NEWS_DATA_DIR: ../shared/data is the default), output to a file."""
    env = {key: value for key, value in os.environ.items() if key != "NEWS_DATA_DIR"}
    env["POCKETBERT_PROGRESS_SECONDS"] = "0.2"
    log = tmp_path / "fit.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "recipes", "fit", "--config", "news16_cpu.yaml", "--data.init_args.labels",
             "[sports,finance]", "--data.init_args.limit_per_class", "400", "--data.init_args.batch_size", "4",
             "--trainer.max_epochs", "2",
             *TINY, "--data.init_args.cache_dir", str(tmp_path / "cache"),
             "--trainer.logger.init_args.save_dir", str(tmp_path / "tb")],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        seen_while_running = False
        while process.poll() is None:
            time.sleep(0.5)
            if PROGRESS_LINE.search(log.read_text()):
                seen_while_running = process.poll() is None
                break
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert seen_while_running, text[-3000:]  # flushed as it goes, not at the end
    lines = PROGRESS_LINE.findall(text)
    assert len(lines) >= 2 and set(lines) == {str(2 * 140)}  # 560 training rows / batch 4 = 140 steps an epoch
    assert re.search(r"^epoch 2/2  step 280/280 \(100%\)  loss \d\.\d{4}  elapsed \S+  validated: val_acc \d\.\d{4}  "
                     r"val_loss \d\.\d{4}  val_macro_f1 \d\.\d{4}$", text, re.MULTILINE)
    assert "data dir: " in text and "NEWS_DATA_DIR not set" in text
    for noise in ("litlogger", "v_num", "FLOPs", "LeafSpec", "━━"):
        assert noise not in text, noise
    assert "TextClassifier: " in text and " parameters (" in text  # the summary without FLOPs
    assert re.search(r"^test accuracy \d\.\d{4}   macro-F1 \d\.\d{4}$", text, re.MULTILINE)


def test_data_command_without_news_data_dir_writes_the_news16_split(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "NEWS_DATA_DIR"}
    done = subprocess.run([sys.executable, "-m", "recipes", "data", "--config", "news16_cpu.yaml", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "headlines.char.tsv: read 36000, kept 31998; dropped 0 empty, 2 duplicates" in done.stdout
    for split, rows in (("train", 22398), ("val", 4800), ("test", 4800)):
        assert f"{split}: {rows:,} rows -> {tmp_path / f'{split}.tsv'}" in done.stdout
    assert (tmp_path / "labels.txt").read_text().split() == NEWS16
