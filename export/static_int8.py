"""Static INT8 (weights and activations) exports: ONNX Runtime static quantization and a Core ML W8A8 model.

Both calibrate activation ranges on the same training texts (a seeded sample, tokenized with the shipped
vocabulary), so a model trained with QAT (:mod:`export.qat`) and one that was not (post-training quantization, PTQ)
go through the identical quantizer and compare fairly:

- ONNX (``model.<kind>.int8.onnx``): ``onnxruntime.quantization.quantize_static`` in QDQ format, MinMax
  calibration, uint8 activations per tensor, int8 weights per channel, on every weight ``MatMul``/``Gemm`` and the
  embedding ``Gather`` tables; the attention's activation x activation matmuls stay fp32 (QAT does not simulate them).
- Core ML (``<name><KIND>W8A8.mlpackage``): the export graph with explicit uint8 quantize -> dequantize ops before
  every ``nn.Linear`` (ranges: min/max over the same texts in PyTorch), converted by ``ct.convert`` into Core ML
  ``quantize``/``dequantize`` activation ops, then ``linear_quantize_weights`` (int8 per channel): the W8A8 pattern
  recent Neural Engines run in int8. Predicting needs macOS; Linux checks the spec and simulates the maths.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from export import coreml, qat, shapes
from export.assets import tokenizer_settings
from export.context import ExportContext
from export.errors import ExportError
from export.evaluation import EvalSet, accuracy_and_macro_f1, hf_predictor, onnx_predictor, parity, predict_all
from export.files import atomic_path, record
from export.graph import ShippedModel, load_hf_dir
from export.onnx_export import _quiet, export_onnx, onnx_session

Kind = Literal["qat", "ptq"]


def calibration_set(ctx: ExportContext, count: int, seed: int = 0) -> EvalSet:
    """``count`` training texts (seeded sample) in the shipped model's ids: the activation ranges' data."""
    if not ctx.train_texts:
        raise ExportError("static INT8 calibration needs the training texts (the DataModule's train split); export "
                          "with the recipe's data section")
    texts = random.Random(seed).sample(ctx.train_texts, min(count, len(ctx.train_texts)))
    return EvalSet.from_texts(texts, [0] * len(texts), ctx.tokenizer, ctx.shipped.max_length)


def quantize_onnx_static(source: Path, path: Path, calibration: EvalSet, batch_size: int = 64) -> None:
    """ONNX Runtime static INT8 (QDQ) of ``source`` calibrated (MinMax) on ``calibration``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(list(calibration.batches(batch_size)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input_ids": batch[0], "attention_mask": batch[1]}

    model = onnx.load(str(source))
    del model.graph.value_info[:]  # trace-example shapes that ORT's shape inference rejects (see quantize_onnx_int8)
    weights = {initializer.name for initializer in model.graph.initializer}
    # attention scores and context (activation x activation): fp32, as in QAT
    activation_matmuls = [node.name for node in model.graph.node
                          if node.op_type == "MatMul" and not any(name in weights for name in node.input)]
    with tempfile.TemporaryDirectory(prefix="pocketbert-static-") as folder:
        stripped = Path(folder) / "model.onnx"
        onnx.save(model, str(stripped))
        with atomic_path(path) as tmp, _quiet("root"):
            quantize_static(str(stripped), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["MatMul", "Gemm", "Gather"], nodes_to_exclude=activation_matmuls,
                            calibrate_method=CalibrationMethod.MinMax)


def through_latest(path: Path) -> Path:
    """``path`` with a ``tb_logs/<name>/latest`` pointer file in it replaced by the run folder it names."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        pointer = Path(*parts[: i + 1])
        if part == "latest" and pointer.is_file() and not pointer.is_symlink():
            return Path(pointer.parent, pointer.read_text("utf-8").strip(), *parts[i + 1:])
    return Path(path)


def count_onnx_ops(path: Path, *op_types: str) -> int:
    import onnx

    return sum(node.op_type in op_types for node in onnx.load(str(path)).graph.node)


def write_static_int8(ctx: ExportContext, *, kind: Kind, reference: Path | None = None, calibration_texts: int = 512,
                      min_agreement: float = 0.95, opset: int = 18, coreml_model: bool = True,
                      name: str = "PocketBert", sequence_length: int | shapes.Auto | None = "auto",
                      target: coreml.DeploymentTarget = "iOS17", precision: coreml.Precision = "float16",
                      parity_examples: int = 64) -> None:
    """``onnx_<kind>_int8`` and ``coreml_<kind>_w8a8`` of the shipped model; with ``reference`` (a ``pytorch/``
    folder of another model on the same vocabulary, e.g. the student before QAT), also its PTQ variants
    ``onnx_ptq_int8`` and ``coreml_ptq_w8a8`` with the same calibration."""
    calibration = calibration_set(ctx, calibration_texts)
    models: list[tuple[Kind, ShippedModel, str]] = [(kind, ctx.shipped, ctx.shipped.source)]
    if reference is not None:
        if not (reference / "config.json").is_file():
            raise ExportError(f"ptq_reference {reference} is not a saved classifier folder (no config.json); point "
                              "it at a run's export/pytorch")
        other = ShippedModel(load_hf_dir(reference), ctx.shipped.label_names, ctx.shipped.vocab,
                             ctx.shipped.max_length, source=str(reference),
                             tokenizer_settings=ctx.shipped.tokenizer_settings)
        models.append(("ptq", other, str(reference)))
    for variant_kind, shipped, source in models:
        reference_logits = predict_all(hf_predictor(shipped.model), ctx.eval_set)
        common = {"trained_with_qat": variant_kind == "qat", "model_source": source,
                  "calibration_texts": len(calibration), "fp32_accuracy": float(
                      accuracy_and_macro_f1(reference_logits, ctx.eval_set.labels, len(shipped.label_names))[
                          "accuracy"])}
        _write_onnx(ctx, shipped, variant_kind, calibration, reference_logits, min_agreement, opset, common)
        if coreml_model:
            _write_coreml(ctx, shipped, variant_kind, calibration, name=name, sequence_length=sequence_length,
                          target=target, precision=precision, parity_examples=parity_examples, common=common)


def _figures(ctx: ExportContext, reference_logits: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    return {"test_examples": len(ctx.eval_set), "parity_vs_fp32": parity(reference_logits, logits),
            **accuracy_and_macro_f1(logits, ctx.eval_set.labels, len(ctx.shipped.label_names))}


def _write_onnx(ctx: ExportContext, shipped: ShippedModel, kind: Kind, calibration: EvalSet,
                reference_logits: np.ndarray, min_agreement: float, opset: int, common: dict[str, Any]) -> None:
    path = ctx.export_dir / f"model.{kind}.int8.onnx"
    with tempfile.TemporaryDirectory(prefix="pocketbert-static-") as folder:
        source = Path(folder) / "model.onnx"
        export_onnx(shipped, source, opset)
        quantize_onnx_static(source, path, calibration)
    figures = _figures(ctx, reference_logits, predict_all(onnx_predictor(onnx_session(path)), ctx.eval_set))
    agreement = figures["parity_vs_fp32"]["agreement"]
    if agreement < min_agreement:
        path.unlink()
        raise ExportError(f"static INT8 ONNX ({kind}) agrees with its fp32 model on only {agreement:.4f} of the test "
                          f"set (< min_agreement {min_agreement}); calibrate on more texts or train with QAT")
    record(ctx.export_dir, f"onnx_{kind}_int8", "onnx", path, opset=opset,
           quantization="onnxruntime static int8 (QDQ): uint8 activations per tensor (MinMax), int8 weights per "
                        "channel, int8 embedding tables",
           qdq_nodes=count_onnx_ops(path, "QuantizeLinear", "DequantizeLinear"), **common, **figures)


def _write_coreml(ctx: ExportContext, shipped: ShippedModel, kind: Kind, calibration: EvalSet, *, name: str,
                  sequence_length: int | shapes.Auto | None, target: coreml.DeploymentTarget,
                  precision: coreml.Precision, parity_examples: int, common: dict[str, Any]) -> None:
    with torch.inference_mode():
        ranges = qat.calibrate(shipped.model, ((torch.from_numpy(ids), torch.from_numpy(mask))
                                               for ids, mask in calibration.batches(64)))
    lengths = None
    if sequence_length == "auto":
        lengths, _ = shapes.training_lengths(ctx.tokenizer, ctx.train_texts, shipped.max_length, ctx.eval_set)
    length, _ = shapes.resolve(sequence_length, None, shipped.max_length, lengths)
    qdq = ShippedModel(qat.qdq_model(shipped.model, ranges), shipped.label_names, shipped.vocab, shipped.max_length,
                       source=shipped.source, tokenizer_settings=shipped.tokenizer_settings)
    activations_only = qat.simulated_int8(shipped.model, ranges, weights=False)
    path = ctx.export_dir / f"{name}{kind.upper()}W8A8.mlpackage"
    with coreml.scratch_space():
        settings = coreml.CoreMLSettings(sequence_length=length, target=target, compute_units="ALL",
                                         precision=precision)
        mlmodel, program = coreml.convert(qdq, settings,
                                          metadata=coreml.metadata(shipped, tokenizer_settings(ctx.tokenizer,
                                                                                   shipped.max_length)))
        graph = coreml.graph_parity(program, ShippedModel(activations_only, shipped.label_names, shipped.vocab,
                                                          shipped.max_length), ctx.eval_set, length, parity_examples)
        if graph["max_abs_logit_diff"] > 1e-3:
            raise ExportError(f"the Core ML W8A8 export graph differs from its PyTorch simulation by "
                              f"{graph['max_abs_logit_diff']:.3g}")
        coreml.save(coreml.quantize_weights_8bit(mlmodel), path)
    simulated = qat.simulated_int8(shipped.model, ranges, weights=True)
    reference = predict_all(hf_predictor(shipped.model), ctx.eval_set)
    record(ctx.export_dir, f"coreml_{kind}_w8a8", "coreml", path, sequence_length=length, target=target,
           precision=precision, quantization="W8A8: uint8 activation quantize/dequantize before every linear "
                                             "(ranges: min/max on the calibration texts), int8 weights per channel",
           activation_quantize_ops=coreml.count_ops(path, "quantize"),
           weight_int8_ops=coreml.count_ops(path, "constexpr_affine_dequantize")
           + coreml.count_ops(path, "constexpr_blockwise_shift_scale"),
           graph_parity_vs_simulation=graph,
           simulated_in_pytorch=_figures(ctx, reference, predict_all(hf_predictor(simulated), ctx.eval_set)),
           checked_on_linux="spec (activation quantize ops, int8 weights); accuracy simulated in PyTorch with the "
                            "same ranges and int8 weights", **common)
