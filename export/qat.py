"""Quantization-aware training (QAT): int8 fake quantization of weights and activations while the student trains.

The scheme simulates what the static INT8 exports compute (:mod:`export.static_int8`), so the model learns around
the rounding it will meet:

- every ``nn.Linear`` weight: symmetric int8 per output channel (``[-127, 127]``, no zero point), as ONNX Runtime's
  per-channel ``QInt8`` weights and Core ML's ``linear_symmetric`` per-channel weights store it;
- every ``nn.Linear`` input (activation): asymmetric uint8 per tensor (``[0, 255]`` with a zero point) over a
  running min/max range that always holds 0, as ONNX Runtime's ``QUInt8`` activations calibrated by MinMax;
- every ``nn.Embedding`` table: symmetric int8 per tensor, as ONNX Runtime quantizes a ``Gather``'s table.

Rounding has no gradient, so the straight-through estimator passes it through (``torch.fake_quantize_*``; values
clipped by the range get none). Fake quantization replaces the modules' ``forward`` on the instance only: the
parameters, their names and the checkpoint stay those of the plain model, and :func:`disable_fake_quant` restores
plain fp32 maths (the exports then re-calibrate the activation ranges on training texts).
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from export.errors import ExportError

ModelT = TypeVar("ModelT", bound=nn.Module)
UINT8 = (0, 255)  # activations
INT8_SYMMETRIC = (-127, 127)  # weights and tables


@dataclass
class RangeObserver:
    """Running min/max of a tensor (exponential moving average of each batch's, the first batch as it is), widened
    to hold 0 so that zero (padding, ReLU-like outputs) is exactly representable."""

    momentum: float = 0.9
    low: float = 0.0
    high: float = 0.0
    batches: int = field(default=0)

    def update(self, x: torch.Tensor) -> None:
        low, high = float(x.detach().min()), float(x.detach().max())
        if self.batches == 0:
            self.low, self.high = low, high
        else:
            self.low = self.momentum * self.low + (1 - self.momentum) * low
            self.high = self.momentum * self.high + (1 - self.momentum) * high
        self.batches += 1

    def absorb(self, x: torch.Tensor) -> None:
        """Calibration: the range becomes the min/max over every tensor seen (ONNX Runtime's MinMax)."""
        low, high = float(x.detach().min()), float(x.detach().max())
        self.low, self.high = (low, high) if self.batches == 0 else (min(self.low, low), max(self.high, high))
        self.batches += 1

    def qparams(self) -> tuple[float, int]:
        """(scale, zero point) of uint8 over the range widened to hold 0."""
        return uint8_qparams(self.low, self.high)


def uint8_qparams(low: float, high: float) -> tuple[float, int]:
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / (UINT8[1] - UINT8[0]), 1e-8)
    zero_point = int(min(UINT8[1], max(UINT8[0], round(UINT8[0] - low / scale))))
    return scale, zero_point


def fake_quant_activation(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, *UINT8)


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel (rows of an ``nn.Linear`` weight, shape (out, in))."""
    scale = (weight.detach().abs().amax(dim=1).clamp_min(1e-8) / INT8_SYMMETRIC[1]).float()  # (out,)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, *INT8_SYMMETRIC)


def fake_quant_table(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 over the whole table (one scale, as ONNX Runtime quantizes a Gather's data)."""
    scale = max(float(weight.detach().abs().max()) / INT8_SYMMETRIC[1], 1e-8)
    return torch.fake_quantize_per_tensor_affine(weight, scale, 0, *INT8_SYMMETRIC)


def quantizable_modules(model: nn.Module) -> dict[str, nn.Linear | nn.Embedding]:
    """Name -> every ``nn.Linear`` (weights + input) and ``nn.Embedding`` (table) fake quantization covers."""
    found = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear | nn.Embedding)}
    if not any(isinstance(module, nn.Linear) for module in found.values()):
        raise ExportError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    return found


def _linear_forward(observer: RangeObserver) -> Any:
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            observer.update(x)
        if observer.batches == 0:  # an eval call before any training batch: nothing to quantize against yet
            return F.linear(x, self.weight, self.bias)
        return F.linear(fake_quant_activation(x, *observer.qparams()), fake_quant_weight(self.weight), self.bias)

    return forward


def _embedding_forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, fake_quant_table(self.weight), self.padding_idx, self.max_norm, self.norm_type,
                       self.scale_grad_by_freq, self.sparse)


def _replace_forward(module: nn.Module, forward: Any) -> None:
    """Bind ``forward`` to this instance only (the class, its parameters and the checkpoint keys stay as they are)."""
    module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]


def enable_fake_quant(model: nn.Module, momentum: float = 0.9, tables: bool = True,
                      observers: dict[str, RangeObserver] | None = None) -> dict[str, RangeObserver]:
    """Fake-quantize ``model`` in place (see the module docstring); returns each ``nn.Linear``'s input observer
    (``observers`` continues earlier ranges)."""
    observers = dict(observers or {})
    for name, module in quantizable_modules(model).items():
        if isinstance(module, nn.Linear):
            observer = observers.setdefault(name, RangeObserver(momentum))
            _replace_forward(module, _linear_forward(observer))
        elif tables:
            _replace_forward(module, _embedding_forward)
    return observers


def disable_fake_quant(model: nn.Module) -> None:
    """Plain fp32 maths again: drop the instance ``forward`` set by :func:`enable_fake_quant`."""
    for module in model.modules():
        module.__dict__.pop("forward", None)


def calibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, RangeObserver]:
    """Min/max of every ``nn.Linear`` input over ``batches`` (``input_ids``, ``attention_mask``) of plain maths."""
    observers = {name: RangeObserver() for name, module in quantizable_modules(model).items()
                 if isinstance(module, nn.Linear)}
    hooks = [module.register_forward_pre_hook(lambda _m, args, o=observers[name]: o.absorb(args[0]))
             for name, module in model.named_modules() if name in observers]
    try:
        with torch.inference_mode():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
    finally:
        for hook in hooks:
            hook.remove()
    return observers


def simulated_int8(model: ModelT, observers: dict[str, RangeObserver], weights: bool = True) -> ModelT:
    """An eval copy computing in fp32 what a W8A8 runtime computes: the ``observers``' fixed activation ranges and
    (with ``weights``) int8 per-channel weights; embedding tables stay fp32 (Core ML quantizes them per row)."""
    import copy

    clone = copy.deepcopy(model).eval()
    disable_fake_quant(clone)
    for name, module in quantizable_modules(clone).items():
        if isinstance(module, nn.Linear) and name in observers:
            _replace_forward(module, _static_forward(*observers[name].qparams(), weights))
    return clone


def _static_forward(scale: float, zero_point: int, weights: bool) -> Any:
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weight = fake_quant_weight(self.weight) if weights else self.weight
        return F.linear(fake_quant_activation(x, scale, zero_point), weight, self.bias)

    return forward


def qdq_model(model: ModelT, observers: dict[str, RangeObserver]) -> ModelT:
    """An eval copy whose ``nn.Linear`` inputs pass through explicit uint8 quantize -> dequantize ops
    (``quantized_decomposed``) with the ``observers``' ranges: the graph ``ct.convert`` turns into Core ML
    ``quantize``/``dequantize`` activation ops (int8 weights are added on the converted model)."""
    import copy

    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

    clone = copy.deepcopy(model).eval()
    disable_fake_quant(clone)
    for name, module in quantizable_modules(clone).items():
        if isinstance(module, nn.Linear) and name in observers:
            _replace_forward(module, _qdq_forward(*observers[name].qparams()))
    return clone


def _qdq_forward(scale: float, zero_point: int) -> Any:
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.quantized_decomposed
        q = ops.quantize_per_tensor(x, scale, zero_point, UINT8[0], UINT8[1], torch.uint8)
        return F.linear(ops.dequantize_per_tensor(q, scale, zero_point, UINT8[0], UINT8[1], torch.uint8),
                        self.weight, self.bias)

    return forward
