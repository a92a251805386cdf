"""Classification metrics (torchmetrics) and the confusion-matrix figure for TensorBoard."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures only go to files and TensorBoard
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score


class ClassificationMetrics(nn.Module):
    """Accuracy, macro-F1, per-class F1 and the confusion matrix of one stage, accumulated over an epoch."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.accuracy = MulticlassAccuracy(num_labels, average="micro")
        self.macro_f1 = MulticlassF1Score(num_labels, average="macro")
        self.per_class_f1 = MulticlassF1Score(num_labels, average=None)
        self.confusion = MulticlassConfusionMatrix(num_labels)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        predictions = logits.argmax(dim=-1)
        for metric in (self.accuracy, self.macro_f1, self.per_class_f1, self.confusion):
            metric.update(predictions, labels)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "acc": self.accuracy.compute(),
            "macro_f1": self.macro_f1.compute(),
            "per_class_f1": self.per_class_f1.compute(),
            "confusion": self.confusion.compute(),
        }

    def reset(self) -> None:
        for metric in (self.accuracy, self.macro_f1, self.per_class_f1, self.confusion):
            metric.reset()


def confusion_figure(confusion: torch.Tensor, label_names: list[str], title: str) -> Figure:
    """Row-normalized confusion matrix (rows: true class) with counts in the cells."""
    counts = confusion.cpu().float()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(6.0, 0.45 * len(label_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(label_names)), label_names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(label_names)), label_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(label_names)):
        for j in range(len(label_names)):
            if counts[i, j] > 0:
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6, color=color)
    fig.tight_layout()
    return fig
