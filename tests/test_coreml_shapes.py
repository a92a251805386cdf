"""Core ML input lengths: fixed, enumerated, chosen from the training data's token lengths (export.shapes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from export import ExportError
from export.coreml import describe, load_spec
from export.evaluation import EvalSet
from export.shapes import auto_enumerated_lengths, auto_fixed_length, bucket, resolve, routing, training_lengths
from lightning_modules.datamodule import NewsDataModule
from lightning_modules.hub import load_tokenizer
from recipes.__main__ import main
from tests.conftest import REPO


@pytest.fixture(scope="module")
def news16_lengths(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Token lengths of a real 16-class slice of the news16 training split (200 headlines a class)."""
    data = yaml.safe_load((REPO / "recipes" / "configs" / "news16_cpu.yaml").read_text())["data"]["init_args"]
    datamodule = NewsDataModule(**{**data, "limit_per_class": 200, "cache_dir": tmp_path_factory.mktemp("cache")})
    datamodule.setup("fit")
    texts = datamodule.texts["train"]
    lengths, source = training_lengths(datamodule.tokenizer, texts, 128, EvalSet([], []))
    assert source == f"training split ({len(texts)} of {len(texts)} rows)"
    return lengths


def test_auto_lengths_come_from_the_training_headlines(news16_lengths: np.ndarray) -> None:
    # news16 headlines: the median row is 20-odd tokens, about 1% are longer than 32, none reaches 48
    assert 16 < np.median(news16_lengths) <= 32 < news16_lengths.max() < 48
    assert auto_enumerated_lengths(news16_lengths, 128) == [32, 64, 128]
    assert auto_fixed_length(news16_lengths, 128) == 64
    assert resolve("auto", None, 32, news16_lengths) == (32, None)  # capped at the model's max length
    assert resolve(None, "auto", 32, news16_lengths) == (32, [32])
    assert resolve(None, [64, 16, 32, 16], 128, None) == (64, [16, 32, 64])  # sorted, unique; the largest is default
    assert resolve(None, None, 128, None) == (128, None)
    with pytest.raises(ExportError, match=r"enumerated_lengths \[256\] are outside \[3, the model's max length 128\]"):
        resolve(None, [32, 256], 128, None)


def test_auto_fixed_length_holds_all_but_the_rarest_rows() -> None:
    lengths = np.asarray([20] * 1996 + [40, 45, 50, 100])  # 1999 of 2000 rows (99.95%) hold in 64 tokens
    assert auto_fixed_length(lengths, 128) == 64
    assert auto_fixed_length(np.asarray([20] * 1996 + [40, 45, 100, 100]), 128) == 128  # 99.9% needs 100
    assert auto_enumerated_lengths(lengths, 128) == [32, 64, 128]
    assert auto_enumerated_lengths(np.asarray([5, 6, 7]), 64) == [8, 16, 32, 64]


def test_routing_pads_each_row_to_the_smallest_length_that_holds_it() -> None:
    rows = [[101, *range(n - 2), 102] for n in (5, 8, 9, 20, 40)]
    assert [bucket(len(row), [8, 16, 32]) for row in rows] == [8, 8, 16, 32, 32]
    figures = routing(EvalSet(rows, [0] * 5), [8, 16, 32])
    assert figures["share_by_length"] == {"8": 0.4, "16": 0.2, "32": 0.4}
    assert figures["truncated_share"] == 0.2  # the 40-token row is cut to 32
    assert figures["mean_tokens_run"] == (8 + 8 + 16 + 32 + 32) / 5 and figures["mean_tokens_real"] == 82 / 5


def test_enumerated_lengths_convert_and_match_pytorch_at_each_length(export_run: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    run_dir = export_run["run_dir"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["trainer"]["callbacks"] = [{"class_path": "callbacks.CoreMLExport", "init_args": {
        "name": "Enum", "enumerated_lengths": [8, 16, 32], "minimum_deployment_target": "iOS18",
        "parity_examples": 8, "updatable_head": {"golden_check_size": 8}}}]
    config_file = tmp_path / "enumerated.yaml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True))
    out = tmp_path / "export"
    checkpoint = next((run_dir / "checkpoints").glob("*.ckpt"))
    assert main(["export", "--ckpt", str(checkpoint), "--config", str(config_file), "--out", str(out)]) == 0
    artifacts = json.loads((out / "manifest.json").read_text())["artifacts"]
    shapes = [[1, 8], [1, 16], [1, 32]]
    for name, path in (("coreml", "Enum.mlpackage"), ("coreml_w8", "Enum8Bit.mlpackage")):
        info = describe(load_spec(out / path))
        assert info["specification_version"] == 9  # iOS18: several enumerated inputs
        assert [(i["name"], i["shape"], i["enumerated_shapes"]) for i in info["inputs"]] == [
            ("input_ids", [1, 32], shapes), ("attention_mask", [1, 32], shapes)], name
    encoder = describe(load_spec(out / "EnumPersonalizable.mlpackage"))
    assert encoder["models"][0]["inputs"][0]["enumerated_shapes"] == shapes  # the updatable pipeline's encoder too

    entry = artifacts["coreml"]
    assert entry["enumerated"] == [8, 16, 32] and entry["input_lengths"]["kind"] == "enumerated"
    test_lengths = [len(row) for row in _test_rows(export_run)]
    by_length = entry["graph_parity_by_length"]
    assert list(by_length) == ["8", "16", "32"]
    for length, figures in by_length.items():
        assert figures["examples"] == 8 and figures["max_abs_logit_diff"] < 1e-4 and figures["agreement"] == 1.0
        assert figures["fitting_examples"] == min(8, sum(n <= int(length) for n in test_lengths))
    routed = entry["input_lengths"]["test_routing"]
    expected = {str(size): np.mean([bucket(n, [8, 16, 32]) == size for n in test_lengths]) for size in (8, 16, 32)}
    assert routed["share_by_length"] == pytest.approx(expected) and sum(expected.values()) == pytest.approx(1.0)
    assert routed["mean_tokens_run"] < 32  # shorter rows run at 8 or 16 tokens instead of all at 32


def _test_rows(export_run: dict[str, Any]) -> list[list[int]]:
    data = yaml.safe_load((export_run["run_dir"] / "config.yaml").read_text())["data"]["init_args"]
    datamodule = NewsDataModule(**{**data, "cache_dir": export_run["root"] / "cache"})
    return EvalSet.from_batches(datamodule.test_dataloader()).token_ids


def test_training_lengths_count_tokens_with_the_shipped_tokenizer(vocab_file: Path) -> None:
    tokenizer = load_tokenizer(vocab_file)
    lengths, _ = training_lengths(tokenizer, ["体育新闻", "中" * 300], 128, EvalSet([], []))
    assert lengths.tolist() == [6, 128]  # [CLS] 4 characters [SEP]; truncated to the max length
