"""Core ML: the classifier as an ML Program, its 8-bit weight-quantized twin, and an updatable pipeline.

Conversion goes through :class:`export.graph.ClassifierGraph`, ``torch.export`` and
``ct.convert(..., convert_to="mlprogram")`` with int32 ``input_ids``/``attention_mask`` of shape
(1, sequence_length), optionally flexible in length (``ct.RangeDim``).

On-device personalization: ML Programs cannot be updated on device (``MLUpdateTask`` trains NeuralNetwork and
k-NN models only), so the updatable model is a pipeline classifier of two sub-models: the frozen encoder (an ML
Program, ``input_ids``/``attention_mask`` -> pooled ``features``) and an updatable NeuralNetwork classifier head
(innerProduct + softmax initialized from the trained classifier, categorical cross-entropy, SGD). Only the last
sub-model of an updatable pipeline may be updatable, and the head must stay fp32 (fp16 weights cannot be
updatable), so the head is a separate NeuralNetwork and not part of the ML Program. The two sub-models are also
written on their own (``encoder``/``head``) for apps that compute features once and update the head alone.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from export.errors import ExportError, root_reason
from export.evaluation import EvalSet, parity
from export.files import atomic_path
from export.graph import MIN_SEQUENCE, ClassifierGraph, ShippedModel, prepare

DeploymentTarget = Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"]
ComputeUnits = Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"]
Precision = Literal["float16", "float32"]
IOS18_TARGETS = ("iOS18", "macOS15")  # several enumerated inputs; sparse + int8 (joint) weight compression


@dataclass(frozen=True)
class CoreMLSettings:
    """How the classifier converts to Core ML (``CoreMLExport`` builds it; the manifest records its fields).

    Input length: ``sequence_length`` tokens, a ``RangeDim`` from ``flexible_min`` up to it, or ``enumerated``
    lengths (the largest is the default). ``None`` and ``auto`` lengths (chosen from the training split, see
    :mod:`export.shapes`) are resolved by ``export.steps.write_coreml`` before ``convert`` sees them."""

    sequence_length: int | Literal["auto"] | None = None
    flexible_min: int | None = None
    target: DeploymentTarget = "iOS17"
    compute_units: ComputeUnits = "ALL"
    precision: Precision = "float16"
    enumerated: list[int] | Literal["auto"] | None = None

    def resolved(self, sequence_length: int, enumerated: list[int] | None) -> CoreMLSettings:
        return replace(self, sequence_length=sequence_length, enumerated=enumerated)

    @property
    def length(self) -> int:
        """The (largest) input length of resolved settings."""
        if not isinstance(self.sequence_length, int) or self.enumerated == "auto":
            raise ExportError(f"Core ML settings with unresolved lengths ({self.sequence_length}, {self.enumerated}); "
                              "resolve them with export.shapes.resolve first")
        return self.sequence_length

    @property
    def lengths(self) -> list[int] | None:
        """The enumerated lengths of resolved settings (None: one fixed length or a range)."""
        return self.enumerated if isinstance(self.enumerated, list) else None

    def record(self) -> dict[str, Any]:
        """The fields as the manifest records them beside each Core ML artifact."""
        return asdict(self)


@dataclass
class UpdatableHead:
    """The on-device training settings of the updatable classifier head (used by ``MLUpdateTask``).

    Args:
        learning_rate: SGD learning rate. 0.003 is the rate at which the news16 student's rehearsal
            (``python -m recipes personalize``) gained the most user accuracy while keeping golden-set forgetting
            under 2 points; rehearse your own model with ``--learning-rates`` before shipping.
        batch_size: Mini-batch size.
        epochs: Passes over the user's examples per update.
        momentum: SGD momentum.
        max_golden_accuracy_drop: Rollback rule: an update that lowers accuracy on the golden check set by more
            than this (a fraction, 0.02 = 2 points) should be discarded; written to ``personalization.json`` and
            used by ``python -m recipes personalize``.
        golden_check_size: Test examples (token ids + label) written to ``personalization.json`` for the app to
            check an update against before keeping it.
    """

    learning_rate: float = 0.003
    batch_size: int = 8
    epochs: int = 10
    momentum: float = 0.0
    max_golden_accuracy_drop: float = 0.02
    golden_check_size: int = 256

    def validate(self) -> None:
        if self.learning_rate <= 0 or self.batch_size < 1 or self.epochs < 1 or not 0 <= self.momentum < 1:
            raise ExportError(f"updatable_head needs learning_rate > 0, batch_size >= 1, epochs >= 1 and momentum "
                              f"in [0, 1); got {self}")
        if not 0 <= self.max_golden_accuracy_drop <= 1 or self.golden_check_size < 0:
            raise ExportError(f"updatable_head needs max_golden_accuracy_drop in [0, 1] and golden_check_size >= 0; "
                              f"got {self.max_golden_accuracy_drop} and {self.golden_check_size}")


# coremltools draws a tqdm bar for every conversion stage and every MIL pass pipeline (hundreds per export), with no
# switch to turn them off; the names its modules call tqdm by are swapped for a disabled tqdm during our calls.
# POCKETBERT_COREML_PROGRESS=1 shows them again.
_PROGRESS_BARS = {"coremltools.converters.mil.mil.passes.pass_pipeline": "tqdm",
                  "coremltools.converters.mil.frontend.torch.ops": "_tqdm",
                  "coremltools.converters.mil.backend.nn.op_mapping": "_tqdm",
                  "coremltools.optimize.coreml._quantization_passes": "tqdm"}
PROGRESS_ENV = "POCKETBERT_COREML_PROGRESS"


@contextlib.contextmanager
def _silent_progress_bars() -> Iterator[None]:
    if os.environ.get(PROGRESS_ENV, "0").lower() in {"1", "true", "yes", "on"}:
        yield
        return
    swapped = []
    for module_name, attribute in _PROGRESS_BARS.items():
        module = sys.modules.get(module_name)
        bar = getattr(module, attribute, None)
        if module is not None and bar is not None:
            swapped.append((module, attribute, bar))
            setattr(module, attribute, functools.partial(bar, disable=True))
    try:
        yield
    finally:
        for module, attribute, bar in reversed(swapped):
            setattr(module, attribute, bar)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools logs 'untested torch version' and 'libcoremlpython missing' (Linux) warnings, prints, and draws
    progress bars."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _silent_progress_bars():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def scratch_space() -> Iterator[None]:
    """Route coremltools' temporary ``.mlpackage`` folders into one folder removed afterwards.

    coremltools writes a temporary package for every in-memory ML Program (``tempfile.mkdtemp``) and does not
    delete all of them (``make_pipeline``'s intermediate one leaks), so each export would leave packages in /tmp.
    Models built inside must be saved before the block ends.
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="pocketbert-coreml-") as folder:
        tempfile.tempdir = folder
        try:
            yield
        finally:
            tempfile.tempdir = previous


def _coremltools() -> Any:
    """``import coremltools`` without its import-time warnings (untested torch version; no Core ML on Linux)."""
    with _quiet():
        import coremltools

    return coremltools


def exported_program(shipped: ShippedModel, sequence_length: int, flexible_min: int | None = None,
                     output: Literal["logits", "features"] = "logits",
                     enumerated: list[int] | None = None) -> torch.export.ExportedProgram:
    """The ATen-dialect program handed to ``ct.convert`` (int32 inputs, batch 1); also checked numerically.

    With ``flexible_min`` or ``enumerated`` lengths the sequence axis is dynamic (up to ``sequence_length``)."""
    graph = ClassifierGraph(prepare(shipped.model), output=output, squeeze_batch=output == "features").eval()
    example = (torch.full((1, sequence_length), 100, dtype=torch.int32),
               torch.ones((1, sequence_length), dtype=torch.int32))
    dynamic = None
    shortest = min(enumerated) if enumerated else flexible_min
    if shortest is not None and shortest < sequence_length:
        seq = torch.export.Dim("seq", min=max(MIN_SEQUENCE, shortest), max=sequence_length)
        dynamic = ({1: seq}, {1: seq})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(graph, example, dynamic_shapes=dynamic).run_decompositions({})


def convert(shipped: ShippedModel, settings: CoreMLSettings, *, metadata: dict[str, str],
            output: Literal["logits", "features"] = "logits") -> tuple[Any, torch.export.ExportedProgram]:
    """The ML Program (an ``MLModel``) and the exported program it was converted from (resolved ``settings``).

    Input shape: ``(1, sequence_length)``, or ``(1, RangeDim(flexible_min..sequence_length))``, or
    ``EnumeratedShapes`` of ``(1, length)`` for each ``enumerated`` length (the largest is the default)."""
    ct = _coremltools()
    sequence_length, flexible_min, enumerated = settings.length, settings.flexible_min, settings.lengths
    target, compute_units, precision = settings.target, settings.compute_units, settings.precision
    program = exported_program(shipped, sequence_length, flexible_min, output, enumerated)
    shape: Any = (1, sequence_length)
    if enumerated and len(enumerated) > 1:
        shape = ct.EnumeratedShapes(shapes=[(1, length) for length in enumerated], default=(1, sequence_length))
    elif flexible_min is not None:
        shape = (1, ct.RangeDim(lower_bound=max(MIN_SEQUENCE, flexible_min), upper_bound=sequence_length,
                                default=sequence_length))
    inputs = [ct.TensorType(name=name, shape=shape, dtype=np.int32) for name in ("input_ids", "attention_mask")]
    with _quiet():
        try:
            # fp32 outputs: the updatable head takes fp32 features, and Swift reads Float logits.
            outputs = [ct.TensorType(name=output, dtype=np.float32)]
            mlmodel = ct.convert(program, convert_to="mlprogram", inputs=inputs, outputs=outputs,
                                 minimum_deployment_target=getattr(ct.target, target),
                                 compute_units=getattr(ct.ComputeUnit, compute_units),
                                 compute_precision=getattr(ct.precision, precision.upper()),
                                 skip_model_load=True)
        except Exception as err:
            name = type(shipped.model).__name__
            raise ExportError(f"Core ML conversion of {name} failed: {root_reason(err)}") from err
    mlmodel.short_description = f"pocketbert {output} for {len(shipped.label_names)} news classes"
    mlmodel.user_defined_metadata.update(metadata)
    return mlmodel, program


def metadata(shipped: ShippedModel, tokenizer_settings: dict[str, Any]) -> dict[str, str]:
    """Label names and tokenizer settings as Core ML user-defined metadata (string values)."""
    return {"labels": json.dumps(shipped.label_names, ensure_ascii=False),
            "tokenizer": json.dumps(tokenizer_settings, ensure_ascii=False),
            "max_length": str(shipped.max_length), "source_checkpoint": shipped.source}


def quantize_weights_8bit(mlmodel: Any, joint_compression: bool = False) -> Any:
    """``linear_quantize_weights``: int8 symmetric per-channel weights (dequantized at load or on the fly); with
    ``joint_compression`` a sparse model's non-zero values become int8 and stay sparse (iOS18)."""
    _coremltools()
    import coremltools.optimize as cto

    config = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel"))
    with _quiet():
        return cto.coreml.linear_quantize_weights(mlmodel, config, joint_compression=joint_compression)


def sparse_weights(mlmodel: Any, minimum_sparsity: float = 0.1) -> Any:
    """``prune_weights`` with a zero threshold: weights that are already zero (a pruned model) are stored as a bit
    mask plus the non-zero values (``constexpr_sparse_to_dense``) wherever at least ``minimum_sparsity`` of a tensor
    is zero; nothing else changes, so the maths is the dense model's."""
    _coremltools()
    import coremltools.optimize as cto

    config = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpThresholdPrunerConfig(
        threshold=1e-12, minimum_sparsity_percentile=minimum_sparsity, weight_threshold=2048))
    with _quiet():
        return cto.coreml.prune_weights(mlmodel, config)


def simulate_8bit_weights(model: torch.nn.Module, weight_threshold: int = 2048) -> torch.nn.Module:
    """A copy of ``model`` whose weights hold what :func:`quantize_weights_8bit` stores (symmetric int8 per output
    channel, tensors above ``weight_threshold`` elements), for estimating its accuracy on Linux in fp32 maths."""
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in clone.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.nn.Parameter) and weight.ndim == 2 and weight.numel() > weight_threshold:
                scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0  # (out, 1)
                weight.copy_(torch.clamp(torch.round(weight / scale), -127, 127) * scale)
    return clone


def save(mlmodel: Any, path: Path) -> None:
    with atomic_path(path) as tmp, _quiet():
        mlmodel.save(str(tmp))


def graph_parity(program: torch.export.ExportedProgram, shipped: ShippedModel, eval_set: EvalSet,
                 sequence_length: int, examples: int, fitting_first: bool = False) -> dict[str, float]:
    """The converted program vs the HF model on ``examples`` test rows padded (or cut) to ``sequence_length``: the
    first ones, or with ``fitting_first`` the first rows that fit in it (then the others, cut)."""
    module = program.module()
    reference, logits = [], []
    indices = list(range(len(eval_set)))
    if fitting_first:
        indices.sort(key=lambda i: len(eval_set.token_ids[i]) > sequence_length)  # stable: fitting rows in order
    fitting = sum(len(eval_set.token_ids[i]) <= sequence_length for i in indices[:examples])
    with torch.inference_mode():
        for index in indices[:examples]:
            ids, mask = (torch.from_numpy(a) for a in eval_set.fixed_length(index, sequence_length))
            reference.append(shipped.model(input_ids=ids, attention_mask=mask).logits.float().numpy())
            logits.append(module(ids.int(), mask.int()).float().numpy())
    figures = parity(np.concatenate(reference), np.concatenate(logits))
    return {"examples": len(reference), **({"fitting_examples": fitting} if fitting_first else {}), **figures}


def updatable_head(shipped: ShippedModel, settings: UpdatableHead) -> Any:
    """NeuralNetwork classifier ``features`` (hidden,) -> ``label`` + ``labelProbabilities``, trained weights."""
    ct = _coremltools()
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder, SgdParams

    settings.validate()
    classifier = cast(torch.nn.Linear, shipped.model.classifier)
    weight = classifier.weight.detach().float().numpy()  # (num_labels, hidden)
    bias = classifier.bias.detach().float().numpy()
    num_labels, hidden = weight.shape
    builder = NeuralNetworkBuilder([("features", datatypes.Array(hidden))],
                                   [("labelProbabilities", datatypes.Array(num_labels))], mode="classifier")
    # fp32 features, as the encoder ML Program outputs them (the builder defaults to DOUBLE).
    builder.spec.description.input[0].type.multiArrayType.dataType = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    builder.add_inner_product("classifier", W=weight, b=bias, input_channels=hidden, output_channels=num_labels,
                              has_bias=True, input_name="features", output_name="logits")
    builder.add_softmax("softmax", input_name="logits", output_name="labelProbabilities")
    builder.set_class_labels(list(shipped.label_names), predicted_feature_name="label",
                             prediction_blob="labelProbabilities")
    with _quiet():
        builder.make_updatable(["classifier"])
        builder.set_categorical_cross_entropy_loss(name="loss", input="labelProbabilities")
        builder.set_sgd_optimizer(SgdParams(lr=settings.learning_rate, batch=settings.batch_size,
                                            momentum=settings.momentum))
        builder.set_epochs(settings.epochs)
        return ct.models.MLModel(builder.spec, skip_model_load=True)


def personalizable_pipeline(encoder: Any, head: Any) -> Any:
    """An updatable pipeline classifier: frozen ML Program encoder -> updatable NeuralNetwork head."""
    ct = _coremltools()
    with _quiet():
        pipeline = ct.utils.make_pipeline(encoder, head, compute_units=encoder.compute_unit)
        spec = pipeline.get_spec()
        models = list(spec.pipeline.models)
        spec.pipelineClassifier.pipeline.models.extend(models)  # a classifier: Xcode shows label + probabilities
        spec.isUpdatable = True
        head_spec = head.get_spec()
        spec.description.predictedFeatureName = head_spec.description.predictedFeatureName
        spec.description.predictedProbabilitiesName = head_spec.description.predictedProbabilitiesName
        del spec.description.trainingInput[:]
        spec.description.trainingInput.extend(list(encoder.get_spec().description.input))
        spec.description.trainingInput.extend([t for t in head_spec.description.trainingInput if t.name == "label"])
        return ct.models.MLModel(spec, weights_dir=pipeline.weights_dir, skip_model_load=True)


def load_spec(path: Path) -> Any:
    ct = _coremltools()
    with _quiet():
        return ct.utils.load_spec(str(path))


def count_ops(path: Path, op_type: str) -> int:
    """How many ``op_type`` operations the saved ML Program's main function holds."""
    spec = load_spec(path)
    return sum(op.type == op_type for block in spec.mlProgram.functions["main"].block_specializations.values()
               for op in block.operations)


def describe(spec: Any) -> dict[str, Any]:
    """What Linux can check of a saved model: type, I/O names/types/shapes, updatable layers, loss, optimizer."""
    kind = spec.WhichOneof("Type")
    info: dict[str, Any] = {"type": kind, "specification_version": spec.specificationVersion,
                            "inputs": [_feature(f) for f in spec.description.input],
                            "outputs": [_feature(f) for f in spec.description.output],
                            "training_inputs": [_feature(f) for f in spec.description.trainingInput],
                            "is_updatable": bool(spec.isUpdatable)}
    if kind in ("pipeline", "pipelineClassifier"):
        pipeline = spec.pipeline if kind == "pipeline" else spec.pipelineClassifier.pipeline
        info["models"] = [describe(model) for model in pipeline.models]
    if kind in ("neuralNetwork", "neuralNetworkClassifier"):
        network = getattr(spec, kind)
        update = network.updateParams
        sgd = update.optimizer.sgdOptimizer
        info["layers"] = [{"name": layer.name, "type": layer.WhichOneof("layer"), "updatable": layer.isUpdatable}
                          for layer in network.layers]
        info["loss"] = [{"name": loss.name, "type": loss.WhichOneof("LossLayerType")} for loss in update.lossLayers]
        info["optimizer"] = {"type": update.optimizer.WhichOneof("OptimizerType"),
                             "learning_rate": sgd.learningRate.defaultValue,
                             "batch_size": sgd.miniBatchSize.defaultValue, "momentum": sgd.momentum.defaultValue}
        info["epochs"] = update.epochs.defaultValue
    return info


def _feature(feature: Any) -> dict[str, Any]:
    kind = feature.type.WhichOneof("Type")
    described: dict[str, Any] = {"name": feature.name, "type": kind}
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        described["dtype"] = type(array).ArrayDataType.Name(array.dataType)
        described["shape"] = list(array.shape)
        ranges = array.shapeRange.sizeRanges
        if ranges:
            described["shape_range"] = [[r.lowerBound, r.upperBound] for r in ranges]
        enumerated = array.enumeratedShapes.shapes
        if enumerated:
            described["enumerated_shapes"] = sorted(list(shape.shape) for shape in enumerated)
    return described
