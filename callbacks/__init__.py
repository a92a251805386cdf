"""Thin Lightning callbacks: pruning and quantization-aware training while training, fit start (pre-flight) and fit
end (exports, benchmark), predict output, console output, the TensorBoard HParams row; logic lives in export/."""

from callbacks.app_assets import AppAssets
from callbacks.coreml_export import CoreMLExport
from callbacks.export_benchmark import ExportBenchmark
from callbacks.hparams_table import HParamsTable
from callbacks.magnitude_pruning import MagnitudePruning
from callbacks.onnx_export import OnnxExport
from callbacks.parameter_summary import ParameterSummary
from callbacks.prediction_writer import PredictionWriter
from callbacks.progress_lines import ProgressLines
from callbacks.pytorch_export import PyTorchExport
from callbacks.quantization_aware_training import QuantizationAwareTraining
from callbacks.static_int8_export import StaticInt8Export
from callbacks.structured_pruning import StructuredPruning
from callbacks.terminal_progress_bar import TerminalProgressBar

__all__ = ["AppAssets", "CoreMLExport", "ExportBenchmark", "HParamsTable", "MagnitudePruning", "OnnxExport",
           "ParameterSummary", "PredictionWriter", "ProgressLines", "PyTorchExport", "QuantizationAwareTraining",
           "StaticInt8Export", "StructuredPruning", "TerminalProgressBar"]
