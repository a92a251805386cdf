"""Plain functions that quantize, export (ONNX, Core ML, PyTorch) and benchmark a trained classifier.

No Lightning and no project imports: callbacks (``callbacks/``) and ``python -m recipes export`` build an
:class:`ExportContext` and call the ``write_*`` steps; everything written is recorded in ``export/manifest.json``.
"""

from export.benchmark import BENCHMARKED_FORMATS, RUNTIME_FORMATS, Budgets, TimingSettings
from export.context import ExportContext, Exporter, ScalarWriter
from export.coreml import ComputeUnits, CoreMLSettings, DeploymentTarget, Precision, UpdatableHead
from export.errors import ExportError
from export.evaluation import EvalSet
from export.files import MANIFEST, read_manifest, start_manifest
from export.graph import MIN_SEQUENCE, PARITY_TOLERANCE, ClassifierGraph, ShippedModel, check_exportable
from export.monitoring import DriftThresholds, build_baseline, drift_check
from export.personalization import HeadUpdate, UserSimulation, read_head_update, rehearse, replay_update
from export.profile import ProfileSettings
from export.shapes import ENUMERATED_TARGETS
from export.steps import preflight, write_app_assets, write_benchmark, write_coreml, write_onnx, write_pytorch

__all__ = [
    "BENCHMARKED_FORMATS",
    "ENUMERATED_TARGETS",
    "MANIFEST",
    "MIN_SEQUENCE",
    "PARITY_TOLERANCE",
    "RUNTIME_FORMATS",
    "Budgets",
    "ClassifierGraph",
    "ComputeUnits",
    "CoreMLSettings",
    "DeploymentTarget",
    "DriftThresholds",
    "EvalSet",
    "ExportContext",
    "ExportError",
    "Exporter",
    "HeadUpdate",
    "Precision",
    "ProfileSettings",
    "ScalarWriter",
    "ShippedModel",
    "TimingSettings",
    "UpdatableHead",
    "UserSimulation",
    "build_baseline",
    "check_exportable",
    "drift_check",
    "preflight",
    "read_head_update",
    "read_manifest",
    "rehearse",
    "replay_update",
    "start_manifest",
    "write_app_assets",
    "write_benchmark",
    "write_coreml",
    "write_onnx",
    "write_pytorch",
]
