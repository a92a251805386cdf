"""Export callbacks and export functions in isolation: argument checks, pre-flight, budgets, MobileBERT, files."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from transformers import RobertaConfig, RobertaForSequenceClassification

from callbacks import AppAssets, CoreMLExport, ExportBenchmark, MagnitudePruning, OnnxExport, StructuredPruning
from export import (
    Budgets,
    CoreMLSettings,
    EvalSet,
    ExportContext,
    ExportError,
    ShippedModel,
    UpdatableHead,
    write_coreml,
    write_onnx,
)
from export.benchmark import check_budgets
from export.files import atomic_path, read_manifest
from lightning_modules import TextClassifier
from lightning_modules.datamodule import NewsDataModule
from lightning_modules.hub import vocab_tokens
from tests.conftest import NEWS16
from tests.helpers import cpu_trainer, tiny_spec

TINY = tiny_spec("bert32")
TINY_MOBILEBERT = tiny_spec("mobilebert32")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: OnnxExport(opset=12), "opset must be between 18 and 23"),
    (lambda: OnnxExport(min_agreement=99.9), r"min_agreement is a share of the test set in \[0, 1\]"),
    (lambda: CoreMLExport(name="my model"), "identifier"),
    (lambda: CoreMLExport(sequence_length=2), "sequence_length must be at least 3"),
    (lambda: CoreMLExport(sequence_length=64, flexible_min_length=65), "flexible_min_length must be in"),
    (lambda: CoreMLExport(updatable_head=UpdatableHead(learning_rate=0.0)), "updatable_head needs learning_rate > 0"),
    (lambda: CoreMLExport(enumerated_lengths=[32, 64]), "enumerated_lengths needs minimum_deployment_target iOS18"),
    (lambda: CoreMLExport(enumerated_lengths="auto", sequence_length=64, minimum_deployment_target="iOS18"),
     "enumerated_lengths sets the input lengths: drop sequence_length"),
    (lambda: CoreMLExport(enumerated_lengths=[2, 64], minimum_deployment_target="iOS18"), "lengths of at least 3"),
    (lambda: ExportBenchmark(repeats=0), "repeats >= 1"),
    (lambda: ExportBenchmark(budgets=Budgets(max_size_mb=-1)), "budgets.max_size_mb must be 0 or more"),
    (lambda: ExportBenchmark(profile_lengths=[2, 32]), r"profile_lengths must list lengths of at least 3, got \[2"),
    (lambda: AppAssets(golden_texts=["ok", " "]), "empty sentence"),
    (lambda: MagnitudePruning(sparsity=1.0), r"sparsity must be in \(0, 1\), got 1.0"),
    (lambda: MagnitudePruning(ramp_epochs=2.0), r"ramp_epochs must be in \(0, 1\]"),
    (lambda: StructuredPruning(fraction=0.0), r"fraction must be in \(0, 1\)"),
    (lambda: StructuredPruning(heads=False, neurons=False), "needs heads, neurons or both"),
])
def test_bad_arguments_fail_in_init_with_one_line(make: object, message: str) -> None:
    with pytest.raises(ExportError, match=message) as info:
        make()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_bad_callback_argument_in_a_recipe_is_a_one_line_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    from recipes.__main__ import main

    code = main(["fit", "--config", "news16_cpu.yaml", "--trainer.callbacks+=callbacks.OnnxExport",
                 "--trainer.callbacks.opset=9", "--trainer.max_epochs=0"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: OnnxExport opset must be between")


class _Unconvertible(nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(hidden)  # no Core ML (or ONNX) kernel


def test_preflight_fails_before_training_on_an_unsupported_op(vocab_file: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    datamodule = NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=NEWS16[:3], limit_per_class=10,
                                batch_size=8, max_length=16, cache_dir=tmp_path / "cache")
    module = TextClassifier(label_names=datamodule.label_names, tokenizer=datamodule.tokenizer_path, max_length=16,
                            architecture=TINY)
    module.model.bert.pooler.activation = _Unconvertible()  # type: ignore[union-attr]
    trainer = cpu_trainer(callbacks=[CoreMLExport(personalizable=False, quantize_8bit=False)])
    start = time.perf_counter()
    with pytest.raises(ExportError, match=r"Core ML conversion of BertForSequenceClassification failed: .*bessel_j0"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 0 and time.perf_counter() - start < 90


def test_unsupported_architecture_is_named() -> None:
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, num_labels=2)
    shipped = ShippedModel(RobertaForSequenceClassification(config), ["a", "b"], [], 16)
    with pytest.raises(ExportError, match=r"cannot export a RobertaForSequenceClassification .* BERT or MobileBERT"):
        write_onnx(ExportContext(shipped, EvalSet([[101, 5, 102]], [0]), Path("unused")))


def test_budgets_report_each_broken_limit() -> None:
    rows = [
        {"variant": "pytorch_fp32", "size_mb": 40.0, "accuracy_drop_points": 0.0, "p50_ms": 20.0},
        {"variant": "onnx_int8", "size_mb": 11.0, "accuracy_drop_points": 0.8, "p50_ms": 9.0},
        {"variant": "coreml_w8", "size_mb": 10.5, "note": "size only: Core ML predicts on macOS only"},
    ]
    # without variants the budgets apply to what was measured (coreml_w8's verdict says "not measured")
    assert check_budgets(rows, Budgets(max_size_mb=50, max_accuracy_drop=1.0, max_p50_ms=25)) == []
    broken = check_budgets(rows, Budgets(max_size_mb=10.8, max_accuracy_drop=0.5, max_p50_ms=10,
                                         variants=["onnx_int8", "coreml_w8"]))
    # a variant the budgets name must have the figures they limit: an unchecked budget is not a passed one
    assert broken == ["onnx_int8 is 11.0 MB > max_size_mb 10.8",
                      "onnx_int8 loses 0.80 accuracy points > max_accuracy_drop 0.5",
                      "coreml_w8: max_accuracy_drop is set but its accuracy drop was not measured (size only: Core ML "
                      "predicts on macOS only); remove coreml_w8 from budgets.variants or the budget",
                      "coreml_w8: max_p50_ms is set but its p50 latency was not measured (size only: Core ML predicts "
                      "on macOS only); remove coreml_w8 from budgets.variants or the budget"]
    assert check_budgets(rows, Budgets(max_size_mb=50, variants=["coreml_w8"])) == []  # its size was measured
    assert check_budgets(rows, Budgets(max_size_mb=50, variants=["onnx_fp32"])) == [
        "onnx_fp32 is named in budgets.variants but was not exported; add its exporter or remove it from variants"]


def test_benchmark_without_exported_models_says_what_to_list(tmp_path: Path) -> None:
    shipped = ShippedModel(nn.Linear(1, 1), ["a"], ["[PAD]"], 8)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="list PyTorchExport, OnnxExport or CoreMLExport before it"):
        ExportBenchmark().export(ExportContext(shipped, EvalSet([[1]], [0]), tmp_path))


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.mlpackage"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("half")
        raise RuntimeError("conversion died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]
    assert (target / "old").read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"] and len(list(tmp_path.iterdir())) == 1


def test_mobilebert_student_exports_to_onnx_and_coreml(vocab_file: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    datamodule = NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=NEWS16[:3], limit_per_class=20,
                                batch_size=8, max_length=24, cache_dir=tmp_path / "cache")
    module = TextClassifier(label_names=datamodule.label_names, tokenizer=datamodule.tokenizer_path, max_length=24,
                            architecture=TINY_MOBILEBERT)
    shipped = ShippedModel(module.model.eval(), datamodule.label_names, vocab_tokens(module.tokenizer), 24)
    context = ExportContext(shipped, EvalSet.from_batches(datamodule.test_dataloader()), tmp_path / "export")
    write_onnx(context, int8=False)
    write_coreml(context, CoreMLSettings(sequence_length=24, target="iOS17", compute_units="ALL", precision="float32"),
                 name="Student", quantize_8bit=False, head=None, parity_examples=4)
    artifacts = read_manifest(context.export_dir)["artifacts"]
    assert artifacts["onnx_fp32"]["parity_vs_pytorch"]["max_abs_logit_diff"] < 1e-4
    assert artifacts["onnx_fp32"]["test_examples"] == 9
    assert artifacts["coreml"]["graph_parity_vs_pytorch"]["max_abs_logit_diff"] < 1e-4
    assert artifacts["coreml"]["spec"]["outputs"] == [{"name": "logits", "type": "multiArrayType",
                                                      "dtype": "FLOAT32", "shape": [1, 3]}]
