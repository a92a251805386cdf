"""The test set as token ids, predictors over every runtime, and the figures computed from their logits."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# (input_ids, attention_mask) as int64 arrays of shape (batch, seq) -> logits (batch, num_labels), float32.
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class EvalSet:
    """Token ids (unpadded, [CLS] ... [SEP]) and label ids of the real test set."""

    token_ids: list[list[int]]
    labels: list[int]
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_batches(cls, batches: Iterable[Mapping[str, torch.Tensor]], pad_id: int = 0,
                     limit: int | None = None) -> EvalSet:
        """From DataModule batches (``input_ids``, ``attention_mask``, ``labels``), padding stripped."""
        token_ids: list[list[int]] = []
        labels: list[int] = []
        for batch in batches:
            for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
                token_ids.append(ids[mask.bool()].tolist())
                labels.append(int(label))
            if limit is not None and len(labels) >= limit:
                break
        return cls(token_ids[:limit], labels[:limit], pad_id)

    @classmethod
    def from_texts(cls, texts: list[str], labels: list[int], tokenizer: Any, max_length: int,
                   limit: int | None = None) -> EvalSet:
        """Tokenize ``texts`` with the shipped tokenizer (when the training tokenizer's ids differ from it)."""
        texts, labels = texts[:limit], labels[:limit]
        encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return cls([list(ids) for ids in encoded], list(labels), int(tokenizer.pad_token_id or 0))

    def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(input_ids, attention_mask)`` int64 arrays padded to each batch's longest row, in order."""
        for start in range(0, len(self), size):
            rows = self.token_ids[start:start + size]
            width = max(len(r) for r in rows)
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                ids[i, :len(row)] = row
                mask[i, :len(row)] = 1
            yield ids, mask

    def fixed_length(self, index: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Example ``index`` padded (or truncated, keeping [SEP]) to exactly ``length`` tokens: shape (1, length)."""
        row = self.token_ids[index]
        if len(row) > length:
            row = [*row[:length - 1], row[-1]]
        ids = np.full((1, length), self.pad_id, dtype=np.int64)
        mask = np.zeros((1, length), dtype=np.int64)
        ids[0, :len(row)] = row
        mask[0, :len(row)] = 1
        return ids, mask


def torch_predictor(module: Callable[..., Any]) -> Predictor:
    """Wrap a module taking ``(input_ids, attention_mask)`` (an export graph or TorchScript) or an HF model."""

    def predict(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(ids), torch.from_numpy(mask))
        out = getattr(out, "logits", out)
        return out.float().numpy()

    return predict


def hf_predictor(model: Any) -> Predictor:
    def predict(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.float().numpy()

    return predict


def onnx_predictor(session: Any) -> Predictor:
    def predict(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0], dtype=np.float32)

    return predict


def predict_all(predictor: Predictor, eval_set: EvalSet, batch_size: int = 64) -> np.ndarray:
    """Logits (examples, num_labels) for the whole set."""
    return np.concatenate([predictor(ids, mask) for ids, mask in eval_set.batches(batch_size)])


def parity(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Max absolute logit difference and the fraction of examples whose argmax agrees."""
    return {"max_abs_logit_diff": float(np.abs(reference - logits).max()),
            "agreement": float((reference.argmax(-1) == logits.argmax(-1)).mean())}


def accuracy_and_macro_f1(logits: np.ndarray, labels: list[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (mean over classes that are predicted or present, as torchmetrics averages)."""
    predictions = logits.argmax(-1)
    truth = np.asarray(labels)
    f1s = []
    for label in range(num_labels):
        tp = float(((predictions == label) & (truth == label)).sum())
        predicted, actual = float((predictions == label).sum()), float((truth == label).sum())
        if predicted + actual:
            f1s.append(2 * tp / (predicted + actual))
    return {"accuracy": float((predictions == truth).mean()), "macro_f1": float(np.mean(f1s))}
