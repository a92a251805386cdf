"""Shared fixtures: the real data dir (read in place, never copied) and tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("NEWS_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
VOCAB = DATA_DIR / "vocab" / "bert-base-chinese-vocab.txt"
NEWS16 = ["baby", "car", "discovery", "entertainment", "fashion", "finance", "food", "game", "history", "military",
          "regimen", "society", "sports", "tech", "travel", "world"]


def pytest_configure(config: pytest.Config) -> None:
    if not (DATA_DIR / "README.md").exists():
        raise pytest.UsageError(f"real data not found at {DATA_DIR}: set NEWS_DATA_DIR=/path/to/shared/data")
    os.environ["NEWS_DATA_DIR"] = str(DATA_DIR)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_macos = pytest.mark.skip(reason="Core ML predictions run only on macOS")
    import sys

    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "macos" in item.keywords and sys.platform != "darwin":
            item.add_marker(skip_macos)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    return VOCAB


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def export_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tests/configs/export_tiny.yaml fitted through the CLI in a subprocess (output captured, so not a terminal):
    a tiny BERT on a real 4-class slice with every export callback; a size budget is broken on purpose, so the run
    exits with status 2 after writing every artifact and report."""
    root = tmp_path_factory.mktemp("export_run")
    done = subprocess.run([sys.executable, "-m", "recipes", "fit", "--config",
                           str(REPO / "tests" / "configs" / "export_tiny.yaml"),
                           "--trainer.logger.init_args.save_dir", str(root / "tb"),
                           "--data.init_args.cache_dir", str(root / "cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    run_dir = root / "tb" / "export_tiny" / "version_0"
    assert (run_dir / "export" / "manifest.json").is_file(), done.stderr[-3000:]
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    return {"code": done.returncode, "stderr": done.stderr, "stdout": done.stdout, "run_dir": run_dir,
            "export": run_dir / "export", "manifest": manifest, "root": root}
