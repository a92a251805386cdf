"""benchmarks/quality_ladder.py assembles its rungs from the shipped recipes (the runs themselves take hours: faked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import quality_ladder


def test_thucnews10_ladder_ends_with_the_second_round_taught_by_the_first(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    configs: dict[str, dict[str, Any]] = {}

    def fake_run(config: dict[str, Any], name: str, seed: int, out: Path) -> Path:
        folder = tmp_path / f"{name}_seed{seed}"
        (folder / "export").mkdir(parents=True, exist_ok=True)
        accuracy = {"thucnews10_shipped": 0.917, "thucnews10_second_round": 0.919}.get(name, 0.9)
        (folder / "test_metrics.json").write_text(json.dumps({"test_acc": accuracy}))
        (folder / "export" / "benchmark.json").write_text(json.dumps(
            {"variants": [{"variant": "onnx_int8", "accuracy": accuracy - 0.001}]}))
        configs[f"{name}_seed{seed}"] = config
        return folder

    monkeypatch.setattr(quality_ladder, "run", fake_run)
    monkeypatch.setattr(quality_ladder, "linear_baseline", lambda dm: {"model": "svm", "accuracy": 0.909})
    rows = quality_ladder.ladder("thucnews10", [42], [], tmp_path)
    assert [row["rung"] for row in rows][-3:] == [
        "+ the linear companion, PyTorch",
        "+ a second round: the first student beside the linear teachers (shipped recipes), PyTorch",
        "  the shipped ONNX INT8 file"]
    assert rows[-2]["accuracy"] == [0.919] and rows[-1]["accuracy"] == [pytest.approx(0.918)]
    teachers = configs["thucnews10_second_round_seed42"]["model"]["init_args"]["teachers"]
    assert teachers[-1]["init_args"]["checkpoint"] == str(tmp_path / "thucnews10_shipped_seed42" / "best.ckpt")
    assert configs["thucnews10_second_round_seed42"]["model"]["init_args"]["pretrained"] == str(
        tmp_path / "thucnews10_pretrain_seed42" / "pretrained")
    news16 = quality_ladder.ladder("news16", [42], [], tmp_path)  # one round: no born-again recipe for news16
    assert news16[-2]["rung"] == "+ the linear companion (shipped recipes), PyTorch"
    assert not any(name.startswith("news16_second_round") for name in configs)
