"""A user's own raw corpus trains with nothing but a YAML: Toutiao's ``_!_`` layout, no header, a data dir of its
own (no vocab copy: the packaged one is the default), and a too-small class dropped by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_modules.corpus import normalize_text, read_raw
from recipes.__main__ import main
from tests.conftest import DATA_DIR

CLASSES = {"sports": "news_sports", "finance": "news_finance", "car": "news_car", "game": "news_game"}
ROWS = {"sports": 150, "finance": 150, "car": 150, "game": 12}  # game: too few to score, dropped


def write_toutiao_corpus(folder: Path) -> Path:
    """Real NLPCC headlines as ``id_!_code_!_category_!_title_!_keywords`` lines (the raw Toutiao layout)."""
    left = dict(ROWS)
    lines = []
    for number, example in enumerate(read_raw(DATA_DIR / "nlpcc2017/headlines.char.tsv", "nlpcc_char")):
        if left.get(example.label, 0) > 0:
            left[example.label] -= 1
            title = normalize_text(example.text, char_separated=True)
            code = 100 + list(CLASSES).index(example.label)
            category = CLASSES[example.label]
            lines.append(f"{6550000000000000000 + number}_!_{code}_!_{category}_!_{title}_!_关键词,{code}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toutiao_cat_data.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


RECIPE = """# own_corpus: a from-scratch classifier on a raw Toutiao-layout corpus (test).
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 4
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {root}/tb, name: own_corpus}}
model:
  class_path: lightning_modules.TextClassifier
  init_args:
    architecture: {{num_layers: 1, hidden_size: 64, num_heads: 2, intermediate_size: 128, max_position_embeddings: 64}}
    learning_rate: 3.0e-3
data:
  class_path: lightning_modules.NewsDataModule
  init_args:
    data_dir: {root}/data
    train_file: toutiao_cat_data.txt
    format: delimited
    delimiter: "_!_"
    text_field: 3
    label_field: 2
    min_rows_per_class: 30
    rare_classes: drop
    max_length: 64
    batch_size: 16
    cache_dir: {root}/cache
"""


def test_raw_toutiao_corpus_trains_from_a_yaml_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_toutiao_corpus(tmp_path / "data")
    assert not list((tmp_path / "data").rglob("*vocab*"))
    recipe = tmp_path / "own_corpus.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path), encoding="utf-8")
    assert main(["fit", "--config", str(recipe)]) == 0
    run_dir = tmp_path / "tb" / "own_corpus" / "version_0"
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert metrics["test_acc"] > 0.5, metrics  # 3 classes: chance is 1/3
    checkpoint = torch.load(run_dir / "best.ckpt", weights_only=True)
    assert checkpoint["pocketbert"]["label_names"] == ["news_car", "news_finance", "news_sports"]
    assert len(checkpoint["pocketbert"]["vocab"]) == 21128  # the packaged bert-base-chinese vocabulary

    # the exact split it was trained and tested on, without Python, and the cleaning report naming the dropped class
    capsys.readouterr()
    assert main(["data", "--config", str(run_dir / "config.yaml")]) == 0
    dropped = "dropped 1 class(es) with fewer than 30 rows (min_rows_per_class): news_game 12"
    assert dropped in capsys.readouterr().out and dropped in (run_dir / "data" / "report.txt").read_text("utf-8")
    test_rows = read_raw(run_dir / "data" / "test.tsv", "tsv")
    assert len(test_rows) == 3 * round(150 * 0.15) and {e.label for e in test_rows} == {
        "news_car", "news_finance", "news_sports"}
    originals = read_raw(run_dir / "data" / "test.tsv", "tsv", text_field="original")
    assert [o.text for o in originals] == [e.text for e in test_rows]  # titles need no cleaning
