"""ONNX: the export graph with dynamic batch and sequence axes, and ONNX Runtime dynamic INT8 of it."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from export.errors import ExportError, root_reason
from export.files import atomic_path
from export.graph import MIN_SEQUENCE, ClassifierGraph, ShippedModel, prepare

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["logits"]


def export_onnx(shipped: ShippedModel, path: Path, opset: int = 18) -> None:
    """``input_ids``/``attention_mask`` int64 (batch, seq) -> ``logits`` (batch, num_labels), in one file."""
    graph = ClassifierGraph(prepare(shipped.model)).eval()
    length = min(8, shipped.max_length)
    example = (torch.full((2, length), 100, dtype=torch.long), torch.ones((2, length), dtype=torch.long))
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=MIN_SEQUENCE, max=shipped.max_length)
    with atomic_path(path) as tmp, warnings.catch_warnings(), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph, example, str(tmp), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                              dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), opset_version=opset,
                              dynamo=True, external_data=False, verbose=False)
        except Exception as err:
            raise ExportError(f"ONNX export of {type(shipped.model).__name__} failed: {root_reason(err)}") from err
        _store_once(tmp)


def share_duplicate_initializers(graph: Any) -> int:
    """Make nodes that read equal constants read one copy, and drop the others; returns the bytes saved.

    The exporter lifts a constant once per use: the n-gram model hashes its ids twice (token embeddings and the bag),
    so its id map (vocabulary size x int64) would be stored twice, 1% of the INT8 file."""
    from onnx import numpy_helper

    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    rename: dict[str, str] = {}
    kept = []
    outputs = {output.name for output in graph.output}  # a graph output keeps its name
    for tensor in graph.initializer:
        if tensor.name in outputs:
            kept.append(tensor)
            continue
        key = (tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes())
        if key in first:
            rename[tensor.name] = first[key]
        else:
            first[key] = tensor.name
            kept.append(tensor)
    if not rename:
        return 0
    saved = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer if t.name in rename)
    _rename_inputs(graph, rename)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return saved


def _rename_inputs(graph: Any, rename: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        for attribute in node.attribute:  # If/Loop bodies may read the outer graph's constants
            for subgraph in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                _rename_inputs(subgraph, rename)


def _store_once(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    if share_duplicate_initializers(model.graph):
        onnx.save(model, str(path))


def quantize_onnx_int8(source: Path, path: Path, op_types: Sequence[str] | None = None) -> None:
    """ONNX Runtime dynamic quantization: int8 MatMul weights (per channel), activations quantized at run time, and
    int8 embedding tables (``Gather``, one scale a table). ``op_types`` (e.g. ``["MatMul"]``) limits it to those ops;
    the default is every op ONNX Runtime quantizes dynamically, as shipped."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's value_info holds shapes from the trace example; onnxruntime <= 1.30's shape inference in
    # quantize_dynamic rejects them ("Inferred shape and existing shape differ"), so quantize a copy without them.
    model = onnx.load(str(source))
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="pocketbert-onnx-") as folder:
        stripped = Path(folder) / "model.onnx"
        onnx.save(model, str(stripped))
        with atomic_path(path) as tmp, _quiet("root"):
            quantize_dynamic(str(stripped), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=None if op_types is None else list(op_types))


def onnx_session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _quiet:
    """Silence a chatty logger (the ONNX exporter's progress lines, ORT's pre-processing hint) for a block."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)
        self.level = self.logger.level

    def __enter__(self) -> None:
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)
