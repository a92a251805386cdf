"""The distillation recipes through the CLI: a slice of real data end to end, and one-line errors that say what
to run first (a missing teacher, no hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_modules import DistillationModule, EncoderSpec, load_exportable
from recipes.__main__ import main
from tests.conftest import NEWS16, REPO
from tests.helpers import train_tiny_teacher

LABELS = NEWS16[:3]


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_teacher")
    spec = EncoderSpec(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=128)
    return train_tiny_teacher(folder / "teacher.ckpt", spec, labels=LABELS, limit_per_class=40, batch_size=16,
                              max_epochs=2, cache_dir=folder / "cache")


def test_distill_recipe_end_to_end_on_a_real_slice(teacher_checkpoint: Path, tmp_path: Path) -> None:
    code = main([
        "fit", "--config", "news16_distill_cpu.yaml",
        "--model.init_args.teacher_checkpoint", str(teacher_checkpoint),
        "--data.init_args.labels", f"[{','.join(LABELS)}]",
        "--data.init_args.limit_per_class", "40",
        "--data.init_args.cache_dir", str(tmp_path / "cache"),
        "--model.init_args.architecture.num_layers", "1",
        "--model.init_args.architecture.hidden_size", "32",
        "--model.init_args.architecture.num_heads", "2",
        "--model.init_args.architecture.intermediate_size", "64",
        "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "tb_logs"),
    ])
    assert code == 0
    best = tmp_path / "tb_logs" / "news16_distill_cpu" / "latest" / "best.ckpt"
    metrics = json.loads((best.parent / "test_metrics.json").read_text())
    assert 0.0 <= metrics["test_acc"] <= 1.0 and Path(metrics["best_checkpoint"]).resolve() == best.resolve()
    assert list(tmp_path.glob("cache/teacher-logits-*.pt"))  # the teacher ran once, into the cache
    exportable = load_exportable(best)
    assert exportable.label_names == LABELS and len(exportable.vocab) < 5000  # pruned
    checkpoint = torch.load(best, weights_only=True)
    assert all(key.startswith("model.") for key in checkpoint["state_dict"])
    # the recipe's fit-end callbacks exported every artifact of the student (issue 4), listed in the manifest
    manifest = json.loads((best.parent / "export" / "manifest.json").read_text())
    assert set(manifest["artifacts"]) >= {"pytorch_fp32", "pytorch_int8", "onnx_fp32", "onnx_int8", "coreml",
                                          "coreml_w8", "coreml_personalizable", "vocab", "labels", "golden_tokens"}
    assert (best.parent / "export" / "benchmark.json").is_file()
    assert (best.parent / "export" / "vocab.txt").read_text("utf-8").rstrip("\n").split("\n") == exportable.vocab
    student = DistillationModule.load_from_checkpoint(best, weights_only=True, teacher_checkpoint=None)
    ids = torch.tensor([[student.tokenizer.cls_token_id, 5, 6, student.tokenizer.sep_token_id]])
    with torch.no_grad():
        assert torch.allclose(student.eval()(ids, torch.ones_like(ids)), exportable.model(input_ids=ids).logits)


def test_missing_teacher_says_which_recipe_to_run_first(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no tb_logs here
    code = main(["fit", "--config", "news16_distill_cpu.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == ("error: teacher checkpoint tb_logs/news16_cpu/latest/best.ckpt not found: train the teacher "
                       "first (python -m recipes fit --config news16_cpu.yaml), or set "
                       "model.init_args.teacher_checkpoint")
    assert not (tmp_path / "tb_logs").exists()  # nothing half-made


def test_hub_distill_recipe_fails_fast_offline_naming_the_offline_recipe() -> None:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recipes", "fit", "--config", "news16_distill.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: cannot download") and "news16_distill_cpu.yaml" in last_line
    assert time.perf_counter() - start < 60  # interpreter and imports; no hub retries
