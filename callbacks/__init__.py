"""Thin Lightning callbacks: pruning while training, fit start (pre-flight) and fit end (exports, benchmark), predict
output, console output, the TensorBoard HParams row; logic lives in export/."""

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
from callbacks.structured_pruning import StructuredPruning
from callbacks.terminal_progress_bar import TerminalProgressBar

__all__ = ["AppAssets", "CoreMLExport", "ExportBenchmark", "HParamsTable", "MagnitudePruning", "OnnxExport",
           "ParameterSummary", "PredictionWriter", "ProgressLines", "PyTorchExport", "StructuredPruning",
           "TerminalProgressBar"]
