"""Fit-end static INT8 exports (weights and activations): ONNX Runtime static QDQ and Core ML W8A8."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from callbacks.context import export_context
from callbacks.quantization_aware_training import QuantizationAwareTraining
from export import DeploymentTarget, ExportContext, ExportError, Precision
from export.static_int8 import through_latest, write_static_int8

W8A8_TARGETS = ("iOS17", "iOS18", "macOS14", "macOS15")  # Core ML activation quantize/dequantize ops


class StaticInt8Export(Callback):
    """At fit end, write ``model.<kind>.int8.onnx`` (ONNX Runtime static INT8, QDQ) and ``<name><KIND>W8A8.mlpackage``
    (Core ML int8 activations and weights) into ``<log_dir>/export/``, calibrated on training texts; ``kind`` is
    ``qat`` after ``callbacks.QuantizationAwareTraining`` and ``ptq`` (post-training quantization) otherwise.
    Accuracy and agreement with the fp32 model go to the manifest; the benchmark times the ONNX file.

    Args:
        kind: ``auto`` (``qat`` when the fit used QuantizationAwareTraining), or ``qat``/``ptq`` to name it.
        ptq_reference: A ``pytorch/`` export folder of a model on the same vocabulary (the student before QAT, e.g.
            ``tb_logs/news16_distill_cpu/latest/export/pytorch``): also writes its PTQ variants, same calibration.
        calibration_texts: Training texts (seeded sample) the activation ranges are calibrated on.
        min_agreement: Fail when the static ONNX model agrees with its fp32 model on less than this share of the
            test set.
        coreml: Also write the Core ML W8A8 model.
        name: Core ML model name prefix.
        sequence_length: Core ML fixed input length; ``auto``: from the training data (as ``CoreMLExport``).
        minimum_deployment_target: Core ML target; activation quantization needs iOS17/macOS14 or later.
        compute_precision: Core ML precision of the unquantized ops.
    """

    def __init__(self, kind: Literal["auto", "qat", "ptq"] = "auto", ptq_reference: Path | None = None,
                 calibration_texts: int = 512, min_agreement: float = 0.95, coreml: bool = True,
                 name: str = "PocketBert", sequence_length: int | Literal["auto"] | None = "auto",
                 minimum_deployment_target: DeploymentTarget = "iOS17",
                 compute_precision: Precision = "float16") -> None:
        if calibration_texts < 1:
            raise ExportError(f"StaticInt8Export calibration_texts must be positive, got {calibration_texts}")
        if not 0.0 <= min_agreement <= 1.0:
            raise ExportError(f"StaticInt8Export min_agreement is a share in [0, 1], got {min_agreement}")
        if minimum_deployment_target not in W8A8_TARGETS:
            raise ExportError(f"StaticInt8Export needs minimum_deployment_target in {list(W8A8_TARGETS)} (Core ML "
                              f"activation quantization), got {minimum_deployment_target}")
        if not name.isidentifier():
            raise ExportError(f"StaticInt8Export name must be an identifier such as PocketBert, got {name!r}")
        self.kind, self.ptq_reference, self.calibration_texts = kind, ptq_reference, calibration_texts
        self.min_agreement, self.coreml, self.name = min_agreement, coreml, name
        self.sequence_length, self.target = sequence_length, minimum_deployment_target
        self.precision = compute_precision
        self._qat_fit = False

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            self.follows(trainer.callbacks)  # type: ignore[attr-defined]
            self.export(export_context(trainer, pl_module))

    def follows(self, callbacks: list[Callback]) -> None:
        """Name the files ``qat`` (with ``kind: auto``) when ``callbacks`` (the fit's, or those of the config that
        ``python -m recipes export`` reads) include QuantizationAwareTraining."""
        self._qat_fit = any(isinstance(callback, QuantizationAwareTraining) for callback in callbacks)

    def export(self, context: ExportContext) -> None:
        kind = self.kind if self.kind != "auto" else ("qat" if self._qat_fit else "ptq")
        reference = through_latest(self.ptq_reference) if self.ptq_reference is not None else None
        write_static_int8(context, kind=kind, reference=reference, calibration_texts=self.calibration_texts,
                          min_agreement=self.min_agreement, coreml_model=self.coreml, name=self.name,
                          sequence_length=self.sequence_length, target=self.target, precision=self.precision)
