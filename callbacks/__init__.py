"""Thin Lightning callbacks run at fit start (pre-flight) and fit end (exports, benchmark); logic lives in export/."""

from callbacks.app_assets import AppAssets
from callbacks.coreml_export import CoreMLExport
from callbacks.export_benchmark import ExportBenchmark
from callbacks.onnx_export import OnnxExport
from callbacks.pytorch_export import PyTorchExport

__all__ = ["AppAssets", "CoreMLExport", "ExportBenchmark", "OnnxExport", "PyTorchExport"]
