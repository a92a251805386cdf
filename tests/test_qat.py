"""Quantization-aware training and the static INT8 exports: fake quantization while training (and gone after), ONNX
Runtime static QDQ and Core ML W8A8 files of a tiny student on real headlines, and a QAT fit through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from callbacks import QuantizationAwareTraining, StaticInt8Export
from export import EvalSet, ExportContext, ExportError, ShippedModel, read_manifest, start_manifest
from export.baseline import BASELINE
from export.coreml import count_ops, describe, load_spec
from export.ngram_bert import NgramBertConfig, NgramBertForSequenceClassification
from export.qat import (
    RangeObserver,
    calibrate,
    disable_fake_quant,
    enable_fake_quant,
    fake_quant_weight,
    simulated_int8,
    uint8_qparams,
)
from export.static_int8 import calibration_set, count_onnx_ops, through_latest, write_static_int8
from export.torch_export import save_pytorch
from tests.conftest import DATA_DIR, REPO

LABELS = ["sports", "finance", "car", "game"]


def headlines(per_class: int) -> tuple[list[str], list[int]]:
    """The first ``per_class`` NLPCC 2017 headlines of each of 4 classes (real text, read in place)."""
    texts, labels, seen = [], [], Counter[str]()
    with (DATA_DIR / "nlpcc2017" / "headlines.char.tsv").open(encoding="utf-8") as rows:
        for row in rows:
            label, chars = row.rstrip("\n").split("\t")
            if label in LABELS and seen[label] < per_class:
                seen[label] += 1
                texts.append(chars.replace(" ", ""))
                labels.append(LABELS.index(label))
    return texts, labels


def tiny_student(vocab_size: int, seed: int = 0) -> NgramBertForSequenceClassification:
    torch.manual_seed(seed)
    config = NgramBertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=128, max_position_embeddings=64, ngram_orders=[2], ngram_buckets=97,
                             pooling="mean", ngram_bag=True, num_labels=len(LABELS))
    return NgramBertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def tiny_context(tmp_path_factory: pytest.TempPathFactory) -> ExportContext:
    texts, labels = headlines(120)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({c for text in texts for c in text})]
    model = tiny_student(len(vocab))
    shipped = ShippedModel(model, LABELS, vocab, 32, source="tiny")
    train = [i for i in range(len(texts)) if i % 4]
    test = [i for i in range(len(texts)) if not i % 4]
    eval_set = EvalSet.from_texts([texts[i] for i in test], [labels[i] for i in test], shipped.tokenizer(), 32)
    out = tmp_path_factory.mktemp("static") / "export"
    start_manifest(out, source_checkpoint="tiny")
    return ExportContext(shipped, eval_set, out, texts=[texts[i] for i in test], train_texts=[texts[i] for i in train],
                         train_labels=[labels[i] for i in train])


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 200, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2:, 8:] = 0
    return ids, mask


def test_uint8_range_holds_zero_and_weights_round_to_127_levels() -> None:
    scale, zero = uint8_qparams(0.5, 2.0)  # widened to [0, 2]: zero is exact
    assert zero == 0 and scale == pytest.approx(2.0 / 255)
    scale, zero = uint8_qparams(-1.0, 3.0)
    assert zero == round(1.0 / scale) and 0 < zero < 255
    weight = torch.tensor([[0.5, -1.0, 0.25], [3.0, 1.0, -2.0]])
    quantized = fake_quant_weight(weight)
    steps = quantized / (weight.abs().amax(dim=1, keepdim=True) / 127)  # per row: integers in [-127, 127]
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 127 + 1e-4
    observer = RangeObserver(momentum=0.5)
    observer.update(torch.tensor([-1.0, 1.0]))
    observer.update(torch.tensor([-3.0, 3.0]))
    assert (observer.low, observer.high) == (-2.0, 2.0)  # moving average of the batch ranges


def test_fake_quant_trains_through_rounding_keeps_the_checkpoint_and_switches_off() -> None:
    model = tiny_student(200)
    keys = list(model.state_dict())
    ids, mask = batch()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    observers = enable_fake_quant(model)
    assert len(observers) == 8  # q, k, v, attention output, FFN in and out, pooler, classifier
    model.train()
    out = model(input_ids=ids, attention_mask=mask).logits
    out.sum().backward()  # straight-through: rounding passes gradients
    assert model.bert.encoder.layer[0].intermediate.dense.weight.grad.abs().sum() > 0
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert all(observer.batches >= 1 for observer in observers.values())  # ranges seen in training
    model.eval()
    with torch.no_grad():
        quantized = model(input_ids=ids, attention_mask=mask).logits
    assert 0 < (quantized - plain).abs().max() < 0.2  # int8 rounding: close, not equal
    assert list(model.state_dict()) == keys  # checkpoints hold the plain parameters
    disable_fake_quant(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, plain)


def test_callbacks_check_their_arguments() -> None:
    with pytest.raises(ExportError, match="start_epoch must be >= 0"):
        QuantizationAwareTraining(start_epoch=-1)
    with pytest.raises(ExportError, match="needs minimum_deployment_target in"):
        StaticInt8Export(minimum_deployment_target="iOS16")
    with pytest.raises(ExportError, match="calibration_texts must be positive"):
        StaticInt8Export(calibration_texts=0)


def test_through_latest_reads_the_pointer_file(tmp_path: Path) -> None:
    (tmp_path / "run" / "version_3" / "export").mkdir(parents=True)
    (tmp_path / "run" / "latest").write_text("version_3\n")
    assert through_latest(tmp_path / "run" / "latest" / "export") == tmp_path / "run" / "version_3" / "export"


def test_static_int8_onnx_and_core_ml_w8a8_of_a_model_and_its_ptq_reference(tiny_context: ExportContext,
                                                                            tmp_path: Path) -> None:
    reference = ShippedModel(tiny_student(len(tiny_context.shipped.vocab), seed=1), LABELS, tiny_context.shipped.vocab,
                             32)
    save_pytorch(reference, tmp_path / "pytorch")
    write_static_int8(tiny_context, kind="qat", reference=tmp_path / "pytorch", calibration_texts=200,
                      sequence_length="auto", parity_examples=8)
    artifacts = read_manifest(tiny_context.export_dir)["artifacts"]
    assert {"onnx_qat_int8", "coreml_qat_w8a8", "onnx_ptq_int8", "coreml_ptq_w8a8"} <= set(artifacts)
    onnx = artifacts["onnx_qat_int8"]
    assert onnx["trained_with_qat"] and not artifacts["onnx_ptq_int8"]["trained_with_qat"]
    assert artifacts["onnx_ptq_int8"]["model_source"] == str(tmp_path / "pytorch")
    path = tiny_context.export_dir / onnx["path"]
    # every weight matmul/gemm and embedding table quantized: 4 QDQ pairs on one layer's linears at least
    assert count_onnx_ops(path, "QuantizeLinear") >= 8 and onnx["qdq_nodes"] >= 16
    assert onnx["parity_vs_fp32"]["agreement"] >= 0.95 and onnx["parity_vs_fp32"]["max_abs_logit_diff"] < 0.2
    assert onnx["calibration_texts"] == 200 and onnx["test_examples"] == 120
    fp32 = (tiny_context.export_dir.parent / "fp32.onnx")
    assert onnx["bytes"] < 0.6 * _fp32_onnx_bytes(tiny_context, fp32)  # int8 weights and tables
    coreml = artifacts["coreml_qat_w8a8"]
    assert coreml["sequence_length"] == 32  # auto: the power of two holding 99.9% of the training headlines
    package = tiny_context.export_dir / coreml["path"]
    info = describe(load_spec(package))
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"] and info["type"] == "mlProgram"
    # activation quantize/dequantize before the linears (q, k, v share one input), int8 weights above 2,048 values
    assert count_ops(package, "quantize") >= 5 and count_ops(package, "dequantize") >= 5
    assert coreml["activation_quantize_ops"] == count_ops(package, "quantize") and coreml["weight_int8_ops"] >= 3
    assert coreml["graph_parity_vs_simulation"]["max_abs_logit_diff"] < 1e-3
    assert coreml["simulated_in_pytorch"]["parity_vs_fp32"]["agreement"] >= 0.9


def _fp32_onnx_bytes(ctx: ExportContext, path: Path) -> int:
    from export.onnx_export import export_onnx

    export_onnx(ctx.shipped, path)
    return path.stat().st_size


def test_simulated_int8_follows_the_calibrated_ranges() -> None:
    model = tiny_student(200)
    ids, mask = batch()
    ranges = calibrate(model, [(ids, mask)])
    assert ranges["classifier"].batches == 1 and ranges["classifier"].low <= ranges["classifier"].high
    simulated = simulated_int8(model, ranges)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        approx = simulated(input_ids=ids, attention_mask=mask).logits
    assert 0 < (approx - plain).abs().max() < 0.2
    assert "forward" not in vars(model.classifier)  # the original stays plain


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tests/configs/qat_tiny.yaml through the CLI: QAT from the second epoch, then the static INT8 exports."""
    root = tmp_path_factory.mktemp("qat_run")
    done = subprocess.run([sys.executable, "-m", "recipes", "fit", "--config",
                           str(REPO / "tests" / "configs" / "qat_tiny.yaml"),
                           "--trainer.logger.init_args.save_dir", str(root / "tb"),
                           "--data.init_args.cache_dir", str(root / "cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = root / "tb" / "qat_tiny" / "version_0"
    return {"run_dir": run_dir, "export": run_dir / "export", "output": done.stdout + done.stderr,
            "manifest": json.loads((run_dir / "export" / "manifest.json").read_text())}


@pytest.mark.slow  # a 4-epoch CLI fit with exports: about 2 minutes on 2 shared cores
def test_qat_fit_exports_and_benchmarks_the_qat_variants(qat_run: dict[str, Any]) -> None:
    assert "quantization-aware training from epoch 2" in qat_run["output"]
    artifacts = qat_run["manifest"]["artifacts"]
    onnx = artifacts["onnx_qat_int8"]
    assert onnx["trained_with_qat"] and onnx["parity_vs_fp32"]["agreement"] >= 0.95
    assert onnx["accuracy"] > 0.5  # 4 real classes: chance is 0.25
    report = json.loads((qat_run["export"] / "benchmark.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert rows["onnx_qat_int8"]["accuracy"] == pytest.approx(onnx["accuracy"]) and rows["onnx_qat_int8"]["p50_ms"] > 0
    assert rows["coreml_qat_w8a8"]["simulated_accuracy"] == artifacts["coreml_qat_w8a8"]["simulated_in_pytorch"][
        "accuracy"]
    checkpoint = torch.load(json.loads((qat_run["run_dir"] / "test_metrics.json").read_text())["best_checkpoint"],
                            map_location="cpu", weights_only=True)
    assert not any("forward" in key for key in checkpoint["state_dict"])


@pytest.mark.macos
def test_core_ml_w8a8_predicts_what_the_simulation_does_on_macos(tiny_context: ExportContext) -> None:
    import coremltools as ct

    write_static_int8(tiny_context, kind="ptq", calibration_texts=200, sequence_length=32, parity_examples=8)
    entry = read_manifest(tiny_context.export_dir)["artifacts"]["coreml_ptq_w8a8"]
    model = ct.models.MLModel(str(tiny_context.export_dir / entry["path"]), compute_units=ct.ComputeUnit.CPU_ONLY)
    ranges = calibrate(tiny_context.shipped.model, [(torch.from_numpy(i), torch.from_numpy(m))
                                                    for i, m in calibration_set(tiny_context, 200).batches(64)])
    simulated = simulated_int8(tiny_context.shipped.model, ranges)
    agree = []
    for index in range(32):
        ids, mask = tiny_context.eval_set.fixed_length(index, 32)
        expected = simulated(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        got = model.predict({"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)})["logits"]
        agree.append(int(np.argmax(got)) == int(expected.argmax()))
    assert np.mean(agree) >= 0.9


@pytest.mark.slow  # re-runs the tiny run's exports
def test_export_command_names_a_qat_checkpoints_files_qat(qat_run: dict[str, Any], tmp_path: Path) -> None:
    from recipes.__main__ import main

    assert main(["export", "--ckpt", str(qat_run["run_dir"] / "best.ckpt"), "--out", str(tmp_path / "export")]) == 0
    artifacts = read_manifest(tmp_path / "export")["artifacts"]
    assert {"onnx_qat_int8", "coreml_qat_w8a8"} <= set(artifacts) and "onnx_ptq_int8" not in artifacts
    assert artifacts["onnx_qat_int8"]["accuracy"] == pytest.approx(qat_run["manifest"]["artifacts"]["onnx_qat_int8"][
        "accuracy"], abs=0.02)


def fake_qat_export(folder: Path, with_baseline: bool) -> Path:
    """What ``benchmarks/qat.py`` reads of a QAT run's export: its benchmark (the baseline row only when asked: runs
    benchmarked before it existed have none) and manifest."""
    export_dir = folder / "export"
    export_dir.mkdir(parents=True)
    variants: list[dict[str, Any]] = [{"variant": "pytorch_fp32", "accuracy": 0.7800},
                                      {"variant": "onnx_int8", "accuracy": 0.7769, "size_mb": 2.5}]
    if with_baseline:
        variants.append({"variant": BASELINE, "model": "TF-IDF char 1-2-grams + LinearSVC(C=0.5)", "size_mb": 1.23,
                         "accuracy": 0.7740, "macro_f1": 0.7702, "train_examples": 11200})
    (export_dir / "benchmark.json").write_text(json.dumps({"variants": variants}))
    artifacts = {"onnx_fp32": {"path": "model.onnx"}, "onnx_int8": {"path": "model.int8.onnx"},
                 "onnx_qat_int8": {"path": "model.qat.onnx", "accuracy": 0.7790, "bytes": 2_600_000,
                                   "parity_vs_fp32": {"agreement": 0.99}, "fp32_accuracy": 0.7800},
                 "coreml_qat_w8a8": {"simulated_in_pytorch": {"accuracy": 0.7712}, "bytes": 2_700_000,
                                     "activation_quantize_ops": 40, "weight_int8_ops": 20}}
    (export_dir / "manifest.json").write_text(json.dumps({"artifacts": artifacts}))
    return export_dir


def test_qat_table_shows_the_baseline_and_each_models_lead_over_it(tmp_path: Path) -> None:
    from benchmarks.qat import markdown, static_figures, summarize, with_leads

    rows = []
    for name, with_baseline in (("QAT", True), ("old QAT run", False)):
        export_dir = fake_qat_export(tmp_path / name, with_baseline)
        row = with_leads(summarize(name, export_dir) | static_figures(export_dir, "onnx_qat_int8", "coreml_qat_w8a8"))
        rows.append(row | {"p50_ms": {"dynamic": {32: 1.0, 128: 2.0}, "static": {32: 0.8, 128: 1.6}}})
    lines = markdown(rows).splitlines()
    assert "| vs baseline fp32 / dynamic / static / W8A8 (pts) |" in lines[0]
    assert lines[2] == "| linear baseline: TF-IDF char 1-2-grams + LinearSVC(C=0.5) | 0.7740 | - | - | - | - | " \
                       "1.23 (scikit-learn) | - | - |"
    assert "| 0.7800 | 0.7769 | 0.7790 | 0.7712 | +0.60 / +0.29 / +0.50 / -0.28 |" in lines[3]
    assert "| - / - / - / - |" in lines[4]  # a run benchmarked before the baseline row: no lead, no crash
    assert rows[0]["vs_baseline_points"]["static"] == pytest.approx(0.50) and rows[1]["baseline"] is None
    assert markdown(rows[1:]).splitlines()[2].startswith("| linear baseline (not in these runs' benchmark.json) | - |")
