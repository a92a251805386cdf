"""Shared fixtures: the real data dir (read in place, never copied) and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

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
