"""Pruning the student: unstructured magnitude pruning (zeros in place) and structured pruning (smaller matrices).

Unstructured: the smallest-magnitude weights of the prunable matrices (every encoder ``nn.Linear``, the pooler, the
n-gram projection and, with ``include_embeddings``, the token and n-gram tables; never the classifier, the position
or type embeddings, LayerNorm or biases) are set to zero, over all of them at once (``global``) or the same share in
each (``layer``). Dense kernels still multiply the zeros, so latency does not change; the gain is in size where the
format stores zeros sparsely (Core ML's ``constexpr_sparse_to_dense``, written by ``coremltools.optimize``).

Structured (``ngram_bert`` students): whole attention heads and FFN neurons with the smallest weight norms are
removed, so Q/K/V, the attention output and both FFN matrices shrink and every runtime computes less. The kept
sizes are written into the config (``layer_heads``, ``layer_intermediate_sizes``), so the model saves, loads and
exports like any other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from export.errors import ExportError
from export.ngram_bert import MODEL_TYPE, keep_heads, keep_neurons

Scope = Literal["global", "layer"]
# embedding tables pruned with include_embeddings; position and type tables stay dense (small, every call uses them)
EMBEDDING_TABLES = ("word_embeddings", "ngram.table")


def prunable_weights(model: nn.Module, include_embeddings: bool = True) -> dict[str, nn.Parameter]:
    """Name -> 2-D weight of every matrix magnitude pruning may zero (see the module docstring)."""
    found: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.ndim != 2 or name.split(".")[-1] == "classifier":
            continue
        if isinstance(module, nn.Linear) or (include_embeddings and isinstance(module, nn.Embedding)
                                             and name.endswith(EMBEDDING_TABLES)):
            found[f"{name}.weight"] = weight
    if not found:
        raise ExportError(f"{type(model).__name__} has no weight matrices to prune")
    return found


def magnitude_masks(weights: dict[str, nn.Parameter], sparsity: float, scope: Scope) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero the ``sparsity`` share of smallest |w|: over all ``weights`` together
    (``global``) or in each (``layer``). Weights already zero are the smallest, so masks only ever grow."""
    if not 0.0 <= sparsity < 1.0:
        raise ExportError(f"sparsity must be in [0, 1), got {sparsity}")

    def threshold(values: torch.Tensor) -> float:
        count = int(sparsity * values.numel())
        return float(values.kthvalue(count).values) if count else -1.0

    with torch.no_grad():
        if scope == "global":
            everything = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
            cut = threshold(everything)
            return {name: w.detach().abs() > cut for name, w in weights.items()}
        return {name: w.detach().abs() > threshold(w.detach().abs().flatten().float().cpu())
                for name, w in weights.items()}


def apply_masks(weights: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, weight in weights.items():
            weight.mul_(masks[name].to(device=weight.device, dtype=weight.dtype))


def cubic_sparsity(step: int, ramp_steps: int, final: float) -> float:
    """Zhu & Gupta's gradual schedule: ``final * (1 - (1 - step / ramp_steps) ** 3)``, then ``final``."""
    progress = min(1.0, step / max(1, ramp_steps))
    return final * (1.0 - (1.0 - progress) ** 3)


def sparsity_report(model: nn.Module, include_embeddings: bool = True) -> dict[str, Any]:
    """Share of zeros in the prunable matrices, in the whole model, and per prunable matrix."""
    weights = prunable_weights(model, include_embeddings)
    zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
    prunable = sum(w.numel() for w in weights.values())
    total = sum(p.numel() for p in model.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    return {"prunable_sparsity": sum(zeros.values()) / prunable, "model_sparsity": all_zeros / total,
            "prunable_parameters": prunable, "parameters": total,
            "by_matrix": {name: zeros[name] / w.numel() for name, w in weights.items()}}


def _encoder(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != MODEL_TYPE:
        raise ExportError(f"structured pruning needs an {MODEL_TYPE} student (its config records the kept sizes); "
                          f"got model_type {getattr(config, 'model_type', type(model).__name__)!r}")
    return model.base_model


def _layers(model: nn.Module) -> Iterator[Any]:
    yield from _encoder(model).encoder.layer


def head_importance(model: nn.Module) -> list[torch.Tensor]:
    """Per layer, one score per head: the L2 norm of its Q, K and V rows and its attention-output columns."""
    config: Any = model.config
    head_size = config.hidden_size // config.num_attention_heads
    scores = []
    with torch.no_grad():
        for layer in _layers(model):
            attention = layer.attention
            rows = [getattr(attention.self, n).weight for n in ("query", "key", "value")]
            heads = rows[0].shape[0] // head_size
            per_head = torch.zeros(heads)
            for h in range(heads):
                block = slice(h * head_size, (h + 1) * head_size)
                per_head[h] = (sum(float(w[block].pow(2).sum()) for w in rows)
                               + float(attention.output.dense.weight[:, block].pow(2).sum())) ** 0.5
            scores.append(per_head)
    return scores


def neuron_importance(model: nn.Module) -> list[torch.Tensor]:
    """Per layer, one score per FFN neuron: its input row norm times its output column norm."""
    with torch.no_grad():
        return [layer.intermediate.dense.weight.norm(dim=1).cpu() * layer.output.dense.weight.norm(dim=0).cpu()
                for layer in _layers(model)]


def prune_structure(model: nn.Module, fraction: float, heads: bool = True, neurons: bool = True) -> dict[str, Any]:
    """Remove the ``fraction`` of attention heads (lowest norm over all layers, at least one kept per layer) and of
    FFN neurons (lowest in each layer) in place; the config records the kept sizes. Returns what was kept."""
    if not 0.0 < fraction < 1.0:
        raise ExportError(f"structured pruning fraction must be in (0, 1), got {fraction}")
    config: Any = model.config
    layers = list(_layers(model))
    before = sum(p.numel() for p in model.parameters())
    head_size = config.hidden_size // config.num_attention_heads
    kept_heads = [int(layer.attention.self.query.out_features // head_size) for layer in layers]
    if heads:
        scores = head_importance(model)
        ranked = sorted((float(s), i, h) for i, layer_scores in enumerate(scores) for h, s in enumerate(layer_scores))
        drop = math.floor(fraction * len(ranked) + 1e-9)
        removed: dict[int, set[int]] = {i: set() for i in range(len(layers))}
        for _, i, h in ranked:
            if drop == 0:
                break
            if len(removed[i]) < len(scores[i]) - 1:  # a layer keeps at least one head
                removed[i].add(h)
                drop -= 1
        for i, layer in enumerate(layers):
            if removed[i]:
                keep_heads(layer.attention, [h for h in range(len(scores[i])) if h not in removed[i]], head_size)
        kept_heads = [len(scores[i]) - len(removed[i]) for i in range(len(layers))]
    sizes = [int(layer.intermediate.dense.out_features) for layer in layers]
    if neurons:
        for i, (layer, scores_i) in enumerate(zip(layers, neuron_importance(model), strict=True)):
            keep = max(1, round((1 - fraction) * scores_i.numel()))
            keep_neurons(layer, scores_i.topk(keep).indices.sort().values)
            sizes[i] = keep
    config.layer_heads, config.layer_intermediate_sizes = kept_heads, sizes
    after = sum(p.numel() for p in model.parameters())
    return {"fraction": fraction, "layer_heads": kept_heads, "layer_intermediate_sizes": sizes,
            "parameters_before": before, "parameters_after": after}
