"""Knowledge-distillation losses: soft + hard labels (Hinton et al.) and hidden-state matching (TinyBERT)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DistillationLoss:
    total: torch.Tensor  # alpha * hard + (1 - alpha) * soft
    hard: torch.Tensor  # cross-entropy with the labels
    soft: torch.Tensor  # T^2 * KL(teacher || student) at temperature T


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *, alpha: float,
    temperature: float,
) -> DistillationLoss:
    """``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    The KL term is averaged over the batch (``batchmean``, the true KL divergence per example); the ``T^2`` factor
    keeps its gradients on the scale of the hard-label term when ``T`` changes. Logits: (batch, num_labels).
    """
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * temperature**2
    return DistillationLoss(alpha * hard + (1.0 - alpha) * soft, hard, soft)


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor], layer_map: Mapping[int, int],
    projection: nn.Module, attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between projected student and teacher hidden states over real (unpadded) tokens.

    ``*_hidden[i]`` is the output of layer ``i`` (0 = embeddings), (batch, seq, hidden) as Hugging Face returns it
    with ``output_hidden_states=True``; ``layer_map`` maps student layers to teacher layers; ``projection`` maps the
    student width to the teacher width (learned, TinyBERT's W_h). Averaged over mapped layers.
    """
    mask = attention_mask.unsqueeze(-1).to(student_hidden[0].dtype)  # (batch, seq, 1)
    per_layer = []
    for student_layer, teacher_layer in layer_map.items():
        diff = projection(student_hidden[student_layer]).float() - teacher_hidden[teacher_layer].float()
        per_layer.append((diff.pow(2) * mask).sum() / (mask.sum() * diff.shape[-1]).clamp(min=1))
    return torch.stack(per_layer).mean()
