"""PyTorch artifacts: the fp32 classifier (``save_pretrained`` layout) and its dynamic INT8 twin (TorchScript).

INT8 uses ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations quantized per batch at run time,
fbgemm/x86 kernels). torch 2.13 marks ``torch.ao.quantization`` deprecated in favour of torchao, but torchao's
``Int8DynamicActivationInt8WeightConfig`` runs ~25x slower than fp32 on CPU without ``torch.compile`` (measured
here on the 4-layer student) and is not a dependency; dynamic-quantized modules cannot go through ``torch.export``
(their packed params are TorchScript objects), so the INT8 file is TorchScript. Both warnings are silenced here
only. ONNX Runtime INT8 (``export.onnx_export``) is the maintained INT8 route for deployment.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.files import atomic_path
from export.graph import ClassifierGraph, ShippedModel, prepare, quiet_transformers


def save_pytorch(shipped: ShippedModel, path: Path) -> None:
    """``config.json`` + ``model.safetensors`` (labels in ``id2label``), loadable with ``from_pretrained``."""
    model = copy.deepcopy(shipped.model).cpu().float().eval()
    model.config.id2label = dict(enumerate(shipped.label_names))
    model.config.label2id = {name: i for i, name in enumerate(shipped.label_names)}
    with atomic_path(path) as tmp, quiet_transformers():
        model.save_pretrained(str(tmp))


def quantize_int8(shipped: ShippedModel) -> nn.Module:
    """The export graph with every ``nn.Linear`` dynamically quantized to int8 (embeddings and LayerNorm stay fp32)."""
    graph = ClassifierGraph(prepare(shipped.model)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(graph, {nn.Linear}, dtype=torch.qint8)


def save_torchscript(module: nn.Module, path: Path, example: tuple[np.ndarray, np.ndarray]) -> None:
    """Trace ``module`` on ``example`` (batch and length stay dynamic: the graph has no shape-dependent branches)."""
    inputs = tuple(torch.from_numpy(a) for a in example)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, inputs, strict=False, check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))


def load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module: nn.Module = torch.jit.load(str(path), map_location="cpu").eval()
    return module
