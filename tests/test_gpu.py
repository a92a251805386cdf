"""On a CUDA GPU (skipped without one): the recipes train in bf16-mixed and 16-mixed through the real CLI, a
GPU-trained checkpoint loads back on CPU and predicts what it predicted on the GPU, and a student distilled on the
GPU (teacher logits cached, or the teacher run on every batch) learns and exports.

Run on a GPU machine: ``NEWS_DATA_DIR=/path/to/data python -m pytest tests/test_gpu.py -m gpu -v``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from lightning_modules import NewsDataModule, TextClassifier, load_exportable
from tests.conftest import REPO
from tests.helpers import SMALL_TEACHER_ARGS

pytestmark = pytest.mark.gpu

LABELS = ["sports", "finance", "car", "game"]  # 4 classes: chance is 0.25
PER_CLASS = 300  # 840 train / 180 val / 180 test headlines
BATCH = 32
TEACHER_ARGS = [
    "--data.init_args.labels", f"[{','.join(LABELS)}]",
    "--data.init_args.limit_per_class", str(PER_CLASS),
    "--data.init_args.batch_size", str(BATCH),
    *SMALL_TEACHER_ARGS,
]
GPU_USED = "GPU available: True (cuda), used: True"
AMP_MESSAGE = {"bf16-mixed": "Using bfloat16 Automatic Mixed Precision (AMP)",
               "16-mixed": "Using 16bit Automatic Mixed Precision (AMP)"}


@dataclass
class Run:
    run_dir: Path
    metrics: dict[str, Any]
    output: str


def fit(recipe: str | Path, name: str, precision: str, folder: Path, cache: Path, extra: list[str]) -> Run:
    """``python -m recipes fit`` on the GPU in a fresh process, as a user runs it."""
    command = [
        sys.executable, "-m", "recipes", "fit", "--config", str(recipe),
        "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", precision,
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "5",
        "--trainer.logger.init_args.save_dir", str(folder / "tb_logs"),
        "--data.init_args.cache_dir", str(cache), *extra,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert GPU_USED in output and AMP_MESSAGE[precision] in output, output[-3000:]
    run_dir = folder / "tb_logs" / name / "version_0"
    return Run(run_dir, json.loads((run_dir / "test_metrics.json").read_text()), output)


def scalars(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def run_figures(run: Run) -> str:
    losses = scalars(run.run_dir, "train_loss")
    return (f"train_loss {losses[0]:.3f} -> {losses[-1]:.3f}, test_loss {run.metrics['test_loss']:.4f}, "
            f"test_acc {run.metrics['test_acc']:.4f}, test_macro_f1 {run.metrics['test_macro_f1']:.4f}")


def assert_learned(run: Run, min_acc: float) -> None:
    """Finite losses that went down in training, and a test accuracy far above chance (0.25)."""
    losses = scalars(run.run_dir, "train_loss")
    assert len(losses) >= 8 and all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    assert math.isfinite(run.metrics["test_loss"]) and run.metrics["test_loss"] < math.log(len(LABELS)), run.metrics
    assert run.metrics["test_acc"] > min_acc, run.metrics
    assert run.metrics["test_macro_f1"] > min_acc - 0.05, run.metrics


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu_cache")  # tokenized once, shared by every run


@pytest.fixture(scope="module")
def bf16_teacher(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Run:
    return fit("news16_cpu.yaml", "news16_cpu", "bf16-mixed", tmp_path_factory.mktemp("bf16_teacher"), cache,
               TEACHER_ARGS)


def predictions(model: L.LightningModule, data: NewsDataModule, accelerator: str, precision: str) -> torch.Tensor:
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision,  # type: ignore[arg-type]
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches: Any = trainer.predict(model, datamodule=data)
    order = torch.cat([b["index"].cpu() for b in batches]).argsort()
    return torch.cat([b["predictions"].cpu() for b in batches])[order]  # by test-split index


def test_bf16_teacher_fits_and_its_checkpoint_predicts_the_same_on_cpu(bf16_teacher: Run, cache: Path) -> None:
    assert_learned(bf16_teacher, min_acc=0.6)
    best = Path(bf16_teacher.metrics["best_checkpoint"])
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    weights = [v for k, v in checkpoint["state_dict"].items() if k.startswith("model.") and v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 for v in weights)  # bf16-mixed keeps fp32 master weights

    data = NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=LABELS, limit_per_class=PER_CLASS,
                          batch_size=BATCH, cache_dir=cache)
    model = TextClassifier.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    on_cpu = predictions(model, data, "cpu", "32-true")
    on_gpu = predictions(model, data, "gpu", "bf16-mixed")
    assert len(on_cpu) == len(data.datasets["test"]) == 180
    agreement = (on_cpu == on_gpu).float().mean().item()
    print(f"GPU-CHECK bf16 teacher: {run_figures(bf16_teacher)}, fp32 CPU vs bf16 GPU agreement {agreement:.4f}")
    assert agreement >= 0.95, agreement
    # the CLI's test (bf16 on the GPU) and fp32 on CPU score the same checkpoint alike
    cpu_acc = (on_cpu == data.datasets["test"].labels).float().mean().item()
    assert cpu_acc == pytest.approx(bf16_teacher.metrics["test_acc"], abs=0.03)

    # the shipped HF model rebuilt from the checkpoint alone (what exports and distillation load) is the same model
    shipped = load_exportable(best).model
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        expected = model.cpu().eval()(batch["input_ids"], batch["attention_mask"])
        rebuilt = shipped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(rebuilt, expected)


def test_fp16_mixed_teacher_fits(tmp_path: Path, cache: Path) -> None:
    run = fit("news16_cpu.yaml", "news16_cpu", "16-mixed", tmp_path, cache, TEACHER_ARGS)
    print(f"GPU-CHECK fp16 teacher: {run_figures(run)}")
    assert_learned(run, min_acc=0.6)


def distill_recipe(folder: Path, teacher: Path, *, exports: bool, **model_args: Any) -> Path:
    """news16_distill_cpu.yaml pointed at ``teacher``; Core ML only where coremltools is installed, or no exports."""
    config = yaml.safe_load((REPO / "recipes" / "configs" / "news16_distill_cpu.yaml").read_text("utf-8"))
    # the checkpoint teacher alone, and a student from scratch (TEACHER_ARGS give its shape)
    config["model"]["init_args"].pop("pretrained")
    config["model"]["init_args"].update(teacher_checkpoint=str(teacher), teachers=[], learning_rate=2e-3, **model_args)
    callbacks = config["trainer"]["callbacks"]
    if not exports:
        callbacks = [c for c in callbacks if c["class_path"].startswith("lightning.")]
    elif importlib.util.find_spec("coremltools") is None:
        callbacks = [c for c in callbacks if c["class_path"] != "callbacks.CoreMLExport"]
    for callback in callbacks:
        if callback["class_path"] == "callbacks.ExportBenchmark":
            # 180 test rows: one INT8 flip is 0.56 points, so the recipe's 0.5-point budget would judge noise here
            callback["init_args"]["budgets"].update(max_accuracy_drop=3.0,
                                                    variants=["onnx_fp32", "onnx_int8", "pytorch_int8"])
    config["trainer"]["callbacks"] = callbacks
    path = folder / "news16_distill_cpu.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
    return path


DISTILL_ARGS = [*TEACHER_ARGS[:6], "--trainer.max_epochs", "6"]


def test_bf16_distillation_with_cached_teacher_logits_learns_and_exports(bf16_teacher: Run, tmp_path: Path,
                                                                       cache: Path) -> None:
    teacher = Path(bf16_teacher.metrics["best_checkpoint"])
    recipe = distill_recipe(tmp_path, teacher, exports=True)
    run = fit(recipe, "news16_distill_cpu", "bf16-mixed", tmp_path, cache, DISTILL_ARGS)
    assert "teacher logits for 840 train texts computed" in run.output
    print(f"GPU-CHECK bf16 student (cached teacher logits): {run_figures(run)}")
    assert_learned(run, min_acc=0.6)
    assert all(math.isfinite(v) for v in scalars(run.run_dir, "train_soft_loss"))
    # the cache holds fp32 logits from the GPU teacher, on CPU
    shapes = {}
    for logits_file in cache.glob("teacher-logits-*.pt"):  # one entry per split: train, val, test
        logits = torch.load(logits_file, weights_only=True)["logits"]
        assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
        shapes[len(logits)] = logits.shape
    assert shapes == {840: (840, 4), 180: (180, 4)}

    export = run.run_dir / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    expected = {"pytorch_fp32", "pytorch_int8", "onnx_fp32", "onnx_int8", "vocab", "labels", "golden_tokens",
                "monitoring_baseline"}
    if importlib.util.find_spec("coremltools") is not None:
        expected |= {"coreml", "coreml_w8", "coreml_personalizable"}
    assert set(manifest["artifacts"]) >= expected
    assert manifest["artifacts"]["onnx_fp32"]["parity_vs_pytorch"]["agreement"] >= 0.999
    # exports score the GPU-trained student in fp32 on CPU; the CLI's test scored it in bf16 on the GPU
    assert manifest["artifacts"]["pytorch_fp32"]["accuracy"] == pytest.approx(run.metrics["test_acc"], abs=0.03)
    benchmark = json.loads((export / "benchmark.json").read_text())
    assert benchmark["broken_budgets"] == []
    assert {row["variant"] for row in benchmark["variants"]} >= {"pytorch_fp32", "pytorch_int8", "onnx_fp32",
                                                                 "onnx_int8"}
    assert load_exportable(Path(run.metrics["best_checkpoint"])).label_names == LABELS


@pytest.mark.parametrize("teacher_mode", ["per_batch", "hidden_states"])
def test_bf16_distillation_with_the_teacher_on_every_batch_learns(bf16_teacher: Run, tmp_path: Path, cache: Path,
                                                                  teacher_mode: str) -> None:
    # per_batch: the teacher runs in bf16 autocast on the GPU each step (no logit cache); hidden_states: TinyBERT
    # matching of both layers of the 2-layer teacher (same vocabulary, 128 wide) through the learned projection
    model_args: dict[str, Any] = ({"teacher_cache": False} if teacher_mode == "per_batch"
                                  else {"layer_map": {1: 1, 2: 2}, "hidden_weight": 0.5})
    recipe = distill_recipe(tmp_path, Path(bf16_teacher.metrics["best_checkpoint"]), exports=False, **model_args)
    run = fit(recipe, "news16_distill_cpu", "bf16-mixed", tmp_path, cache, DISTILL_ARGS)
    assert "teacher logits for" not in run.output  # really no cache
    print(f"GPU-CHECK bf16 student ({teacher_mode}): {run_figures(run)}")
    assert_learned(run, min_acc=0.6)
    if teacher_mode == "hidden_states":
        hidden = scalars(run.run_dir, "train_hidden_loss")
        assert all(math.isfinite(v) for v in hidden) and hidden[-1] < hidden[0], hidden
