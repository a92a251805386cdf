"""Fit-end Core ML artifacts: ML Program, 8-bit weights, updatable pipeline; pre-flight conversion at fit start."""

from __future__ import annotations

import time
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from callbacks.context import export_context
from export import (
    ENUMERATED_TARGETS,
    MIN_SEQUENCE,
    ComputeUnits,
    CoreMLSettings,
    DeploymentTarget,
    ExportContext,
    ExportError,
    Precision,
    UpdatableHead,
    preflight,
    write_coreml,
)


class CoreMLExport(Callback):
    """At fit end, write Core ML models of the best checkpoint into ``<log_dir>/export/``.

    Files: ``<name>.mlpackage`` (ML Program: int32 ``input_ids``/``attention_mask`` of shape
    (1, sequence_length) -> ``logits``; labels and tokenizer settings in its metadata), ``<name>8Bit.mlpackage``
    (8-bit weights) and ``<name>Personalizable.mlpackage`` (a pipeline classifier: frozen encoder + updatable
    NeuralNetwork head for ``MLUpdateTask``; its parts also as ``<name>Encoder.mlpackage`` and ``<name>Head.mlmodel``),
    and ``personalization.json`` (the original head weights, to restore, and the golden check deciding whether an
    on-device update is kept; rehearse the update with ``python -m recipes personalize --run RUN_DIR``).

    Args:
        name: Model name (Xcode derives the generated Swift class from the file name).
        sequence_length: Fixed input length; defaults to the model's max length. ``auto``: the smallest power of
            two holding 99.9% of the training split's token lengths (64 for news16).
        flexible_min_length: When set, inputs accept any length from this to ``sequence_length`` (``ct.RangeDim``;
            the Neural Engine runs the default, longest, length only).
        enumerated_lengths: Input lengths the model accepts (``ct.EnumeratedShapes``; each can run on the Neural
            Engine; the app pads a text to the smallest that holds it), e.g. ``[32, 64, 128]``. ``auto``: powers of
            two from the one holding the median training row up to the max length. Needs iOS18/macOS15.
        minimum_deployment_target: Oldest OS the models run on (iOS16 or later: ML Programs with int32 inputs).
        compute_units: Where Core ML may run the models.
        compute_precision: Precision of the ML Program's weights and activations.
        quantize_8bit: Also write the 8-bit weight-quantized model.
        sparse_weights: Also write ``<name>Sparse.mlpackage``: weights that are zero (a model trained with
            ``MagnitudePruning``) stored as a bit mask plus the non-zero values, so pruning shrinks the app's file;
            on iOS18/macOS15 with ``quantize_8bit`` also ``<name>Sparse8Bit.mlpackage`` (sparse + int8).
        personalizable: Also write the updatable pipeline (and its encoder and head).
        updatable_head: On-device training settings and rollback rule of the updatable head (default: SGD lr 0.003,
            batch 8, 10 epochs; reject an update that costs more than 2 points of golden accuracy).
        parity_examples: Test examples checked through the converted graph against PyTorch.
        preflight: At fit start, trial-convert the untrained model so an unsupported op fails in seconds.
    """

    def __init__(self, name: str = "PocketBert", sequence_length: int | Literal["auto"] | None = None,
                 flexible_min_length: int | None = None, enumerated_lengths: list[int] | Literal["auto"] | None = None,
                 minimum_deployment_target: DeploymentTarget = "iOS17", compute_units: ComputeUnits = "ALL",
                 compute_precision: Precision = "float16", quantize_8bit: bool = True, sparse_weights: bool = False,
                 personalizable: bool = True, updatable_head: UpdatableHead | None = None, parity_examples: int = 128,
                 preflight: bool = True) -> None:
        if not name.isidentifier():
            raise ExportError(f"CoreMLExport name must be a Swift-style identifier such as PocketBert, got {name!r}")
        fixed = sequence_length if isinstance(sequence_length, int) else None
        if fixed is not None and fixed < MIN_SEQUENCE:
            raise ExportError(f"CoreMLExport sequence_length must be at least {MIN_SEQUENCE}, got {sequence_length}")
        if flexible_min_length is not None and not MIN_SEQUENCE <= flexible_min_length <= (fixed or 10**9):
            raise ExportError(f"CoreMLExport flexible_min_length must be in [{MIN_SEQUENCE}, sequence_length], got "
                              f"{flexible_min_length}")
        if enumerated_lengths is not None:
            self._check_enumerated(enumerated_lengths, sequence_length, flexible_min_length, minimum_deployment_target)
        if parity_examples < 1:
            raise ExportError(f"CoreMLExport parity_examples must be positive, got {parity_examples}")
        self.head = updatable_head if updatable_head is not None else UpdatableHead()
        self.head.validate()
        self.personalizable = personalizable
        self.name, self.sequence_length, self.flexible_min = name, sequence_length, flexible_min_length
        self.enumerated = enumerated_lengths
        self.target, self.compute_units, self.precision = minimum_deployment_target, compute_units, compute_precision
        self.quantize_8bit, self.parity_examples, self.preflight = quantize_8bit, parity_examples, preflight
        self.sparse = sparse_weights

    @staticmethod
    def _check_enumerated(lengths: list[int] | str, sequence_length: object, flexible_min: int | None,
                          target: str) -> None:
        if sequence_length is not None or flexible_min is not None:
            raise ExportError("CoreMLExport enumerated_lengths sets the input lengths: drop sequence_length and "
                              "flexible_min_length")
        if target not in ENUMERATED_TARGETS:
            raise ExportError(f"CoreMLExport enumerated_lengths needs minimum_deployment_target iOS18 or macOS15 (Core "
                              f"ML takes one enumerated input before them; the model has two), got {target}")
        if isinstance(lengths, list) and (not lengths or min(lengths) < MIN_SEQUENCE):
            raise ExportError(f"CoreMLExport enumerated_lengths must list lengths of at least {MIN_SEQUENCE}, got "
                              f"{lengths}")

    def settings(self, max_length: int) -> CoreMLSettings:
        """Conversion settings; ``auto`` lengths stay ``auto`` (the export picks them from the training split)."""
        length = self.sequence_length or (None if self.enumerated else max_length)
        if isinstance(length, int) and length > max_length:
            raise ExportError(f"CoreMLExport sequence_length {length} exceeds the model's max length {max_length}")
        if isinstance(self.enumerated, list) and max(self.enumerated) > max_length:
            raise ExportError(f"CoreMLExport enumerated_lengths {self.enumerated} exceed the model's max length "
                              f"{max_length}")
        return CoreMLSettings(sequence_length=length, flexible_min=self.flexible_min, enumerated=self.enumerated,
                              target=self.target, compute_units=self.compute_units, precision=self.precision)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.preflight and trainer.is_global_zero:
            start, max_length = time.perf_counter(), int(pl_module.hparams.get("max_length", 128))
            preflight(getattr(pl_module, "model", pl_module), max_length, "coreml", self.settings(max_length),
                      head=self.head if self.personalizable else None)
            rank_zero_info(f"pre-flight: the untrained model converts to Core ML ({time.perf_counter() - start:.1f} s)")

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            self.export(export_context(trainer, pl_module))

    def export(self, context: ExportContext) -> None:
        write_coreml(context, self.settings(context.shipped.max_length), name=self.name,
                     quantize_8bit=self.quantize_8bit, sparse=self.sparse,
                     head=self.head if self.personalizable else None, parity_examples=self.parity_examples)
