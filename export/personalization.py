"""On-device personalization rehearsed offline: replay ``MLUpdateTask``'s head update in PyTorch on simulated users.

The updatable Core ML head is ``features (hidden,) -> innerProduct -> softmax -> labelProbabilities`` with a
categorical cross-entropy loss on the probabilities and an SGD optimizer (learning rate, mini-batch size, momentum,
epochs, shuffle) written in its spec. :func:`read_head_update` takes all of those from the spec itself, so the
replay trains exactly what the app will train: only the innerProduct's weight and bias, on the pooled features the
encoder feeds the head.

What the replay assumes where the spec is silent (Core ML's trainer is closed source; documented in
docs/personalization.md): the loss is the mean over the mini-batch, the last mini-batch of an epoch may be smaller,
momentum follows PyTorch's ``v = m * v + g; w -= lr * v``, and shuffling uses our own seeded generator, so the order
of examples (not their distribution) differs from the device's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from export.errors import ExportError
from export.evaluation import EvalSet
from export.graph import ClassifierGraph, prepare


@dataclass(frozen=True)
class HeadUpdate:
    """The updatable head of a bundle and the update settings its spec holds."""

    weight: np.ndarray  # (num_labels, hidden) float32
    bias: np.ndarray  # (num_labels,) float32
    labels: list[str]
    learning_rate: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    shuffle: bool = False
    seed: int | None = None

    def settings(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key not in ("weight", "bias", "labels")}


def read_head_update(spec: Any) -> HeadUpdate:
    """The :class:`HeadUpdate` of a NeuralNetwork classifier head spec, or of an updatable pipeline's last model."""
    kind = spec.WhichOneof("Type")
    if kind in ("pipeline", "pipelineClassifier"):
        models = (spec.pipeline if kind == "pipeline" else spec.pipelineClassifier.pipeline).models
        spec, kind = models[-1], models[-1].WhichOneof("Type")
    if kind != "neuralNetworkClassifier" or not spec.isUpdatable:
        raise ExportError(f"the head is a {kind} (updatable: {bool(spec.isUpdatable)}); the replay needs the updatable "
                          "NeuralNetwork classifier CoreMLExport writes (personalizable: true)")
    network = spec.neuralNetworkClassifier
    trainable = [layer for layer in network.layers if layer.isUpdatable]
    if len(trainable) != 1 or trainable[0].WhichOneof("layer") != "innerProduct":
        raise ExportError(f"the replay supports one updatable innerProduct layer, the head has "
                          f"{[(layer.name, layer.WhichOneof('layer')) for layer in trainable]}")
    dense = trainable[0].innerProduct
    softmax = [layer for layer in network.layers if layer.WhichOneof("layer") == "softmax"]
    update = network.updateParams
    losses = [loss.WhichOneof("LossLayerType") for loss in update.lossLayers]
    if (len(softmax) != 1 or list(softmax[0].input) != list(trainable[0].output)
            or losses != ["categoricalCrossEntropyLossLayer"]
            or update.lossLayers[0].categoricalCrossEntropyLossLayer.input != softmax[0].output[0]):
        raise ExportError(f"the replay supports innerProduct -> softmax -> categorical cross-entropy; the head has "
                          f"layers {[layer.WhichOneof('layer') for layer in network.layers]} and losses {losses}")
    optimizer = update.optimizer.WhichOneof("OptimizerType")
    if optimizer != "sgdOptimizer":
        raise ExportError(f"the replay supports the SGD optimizer, the head uses {optimizer}")
    sgd = update.optimizer.sgdOptimizer
    weight = np.asarray(dense.weights.floatValue, dtype=np.float32).reshape(dense.outputChannels, dense.inputChannels)
    bias = (np.asarray(dense.bias.floatValue, dtype=np.float32) if dense.hasBias
            else np.zeros(dense.outputChannels, dtype=np.float32))
    return HeadUpdate(weight=weight, bias=bias, labels=list(network.stringClassLabels.vector),
                      learning_rate=float(sgd.learningRate.defaultValue),
                      batch_size=int(sgd.miniBatchSize.defaultValue), epochs=int(update.epochs.defaultValue),
                      momentum=float(sgd.momentum.defaultValue),
                      shuffle=bool(update.shuffle.defaultValue),
                      seed=int(update.seed.defaultValue) if update.HasField("seed") else None)


def replay_update(head: HeadUpdate, features: np.ndarray, labels: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The head's weight and bias after ``MLUpdateTask`` trains it on ``features`` (n, hidden) with ``labels`` (n,)."""
    if len(features) != len(labels) or len(labels) == 0:
        raise ExportError(f"the update needs as many labels as feature rows (> 0), got {len(features)} and "
                          f"{len(labels)}")
    dense = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0])
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(head.weight))
        dense.bias.copy_(torch.from_numpy(head.bias))
    optimizer = torch.optim.SGD(dense.parameters(), lr=head.learning_rate, momentum=head.momentum)
    inputs = torch.from_numpy(np.asarray(features, dtype=np.float32))
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    for _ in range(head.epochs):
        order = rng.permutation(len(targets)) if head.shuffle else np.arange(len(targets))
        for start in range(0, len(order), head.batch_size):
            batch = torch.from_numpy(order[start:start + head.batch_size])
            # Categorical cross-entropy on softmax probabilities, -log p[target], is cross_entropy on the logits.
            loss = torch.nn.functional.cross_entropy(dense(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return dense.weight.detach().numpy().copy(), dense.bias.detach().numpy().copy()


def pooled_features(model: PreTrainedModel, examples: EvalSet, batch_size: int = 64,
                    progress: Callable[[Iterable[Any]], Iterable[Any]] = iter) -> np.ndarray:
    """The pooled ``features`` the Core ML encoder feeds the head, from the same export graph, shape (n, hidden)."""
    graph = ClassifierGraph(prepare(model), output="features").eval()
    rows = []
    with torch.inference_mode():
        for ids, mask in progress(examples.batches(batch_size)):
            rows.append(graph(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy())
    return np.concatenate(rows)


def predict(weight: np.ndarray, bias: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Predicted class ids, shape (n,)."""
    return np.argmax(features @ weight.T + bias, axis=1)


@dataclass(frozen=True)
class UserSimulation:
    """Simulated app users whose interests skew to a few classes.

    Each user picks ``interest_classes`` classes at random; an item of theirs comes from those classes with
    probability ``interest_share`` and from any class otherwise. Their first ``feedback`` items, labelled (a
    ``label_noise`` share with a random wrong class), train the head; their next ``later_items`` measure it.
    """

    users: int = 100
    feedback: int = 30
    later_items: int = 100
    interest_classes: int = 3
    interest_share: float = 0.8
    label_noise: float = 0.0
    seed: int = 0

    def validate(self, pool_size: int, num_labels: int) -> None:
        if self.users < 1 or self.feedback < 1 or self.later_items < 1:
            raise ExportError(f"users, feedback and later_items must be positive, got {self}")
        if not 1 <= self.interest_classes <= num_labels:
            raise ExportError(f"interest_classes must be in [1, {num_labels}], got {self.interest_classes}")
        if not 0 <= self.interest_share <= 1 or not 0 <= self.label_noise < 1:
            raise ExportError(f"interest_share must be in [0, 1] and label_noise in [0, 1), got {self.interest_share} "
                              f"and {self.label_noise}")
        if self.feedback + self.later_items > pool_size:
            raise ExportError(f"each user needs {self.feedback + self.later_items} items but the held-out pool has "
                              f"{pool_size}; lower feedback/later_items")


@dataclass
class SimulatedUser:
    interests: list[int]
    feedback: np.ndarray  # pool indices of the items the user labels, shape (feedback,)
    feedback_labels: np.ndarray  # the labels the user gives them (true labels unless label_noise), shape (feedback,)
    later: np.ndarray  # pool indices of the items the user sees afterwards, shape (later_items,)


def simulate_users(pool_labels: np.ndarray, num_labels: int, settings: UserSimulation,
                   rng: np.random.Generator) -> list[SimulatedUser]:
    """Users drawn from a held-out pool with true class ids ``pool_labels`` (n,); items are not repeated per user."""
    settings.validate(len(pool_labels), num_labels)
    counts = np.bincount(pool_labels, minlength=num_labels)
    present = np.flatnonzero(counts)
    users = []
    for _ in range(settings.users):
        interests = rng.choice(present, size=min(settings.interest_classes, len(present)), replace=False)
        class_share = np.where(counts > 0, (1 - settings.interest_share) / len(present), 0.0)
        class_share[interests] += settings.interest_share / len(interests)
        item_weight = class_share[pool_labels] / counts[pool_labels]  # (n,): each item of a class equally likely
        drawn = rng.choice(len(pool_labels), size=settings.feedback + settings.later_items, replace=False,
                           p=item_weight / item_weight.sum())
        feedback, later = drawn[:settings.feedback], drawn[settings.feedback:]
        given = pool_labels[feedback].copy()
        noisy = rng.random(len(given)) < settings.label_noise
        given[noisy] = (given[noisy] + rng.integers(1, num_labels, noisy.sum())) % num_labels  # a wrong class
        users.append(SimulatedUser(sorted(int(c) for c in interests), feedback, given, later))
    return users


@dataclass(frozen=True)
class GoldenCheck:
    """The rollback rule an app runs (``personalization.json``): after an update, the model's accuracy on the
    bundle's golden-check examples must not fall below ``accuracy_before`` (PyTorch fp32's on the same examples)
    minus the allowed drop."""

    features: np.ndarray  # (n, hidden): the encoder's pooled features of the bundle's golden-check examples
    labels: np.ndarray  # (n,)
    accuracy_before: float  # the bundle's reference: fp32 accuracy on these examples


def rehearse(head: HeadUpdate, pool_features: np.ndarray, pool_labels: np.ndarray, golden_features: np.ndarray,
             golden_labels: np.ndarray, settings: UserSimulation, max_golden_drop: float,
             golden_check: GoldenCheck | None = None) -> dict[str, Any]:
    """Simulate users, replay each one's update, and report accuracy before/after on their later items and on the
    golden set (the whole test split: forgetting).

    An update is rejected as the app will reject it: by ``golden_check`` (the bundle's examples and reference
    accuracy) when given; else when the golden set's accuracy falls by more than ``max_golden_drop``. With a
    golden check, what the test-split rule would have rejected is reported beside it
    (``updates_rejected_by_test_split``): the bundle's few examples are a noisier judge than the whole split.
    """
    rng = np.random.default_rng(settings.seed)
    users = simulate_users(pool_labels, len(head.labels), settings, rng)
    golden_before = _accuracy(head.weight, head.bias, golden_features, golden_labels)
    rows: list[dict[str, Any]] = []
    for number, user in enumerate(users):
        weight, bias = replay_update(head, pool_features[user.feedback], user.feedback_labels, rng)
        later_features, later_labels = pool_features[user.later], pool_labels[user.later]
        before = _accuracy(head.weight, head.bias, later_features, later_labels)
        after = _accuracy(weight, bias, later_features, later_labels)
        golden_after = _accuracy(weight, bias, golden_features, golden_labels)
        by_test_split = golden_before - golden_after > max_golden_drop
        row: dict[str, Any] = {"user": number, "interests": [head.labels[c] for c in user.interests],
                               "user_accuracy_before": before, "user_accuracy_after": after, "gain": after - before,
                               "golden_accuracy_after": golden_after, "forgetting": golden_before - golden_after,
                               "rejected_by_test_split": bool(by_test_split)}
        rejected = by_test_split
        if golden_check is not None:
            check_after = _accuracy(weight, bias, golden_check.features, golden_check.labels)
            # the app's rule as personalization.json states it, with its reference accuracy
            rejected = check_after < golden_check.accuracy_before - max_golden_drop
            row["golden_check_accuracy_after"] = check_after
        row.update(rejected=bool(rejected), shipped_accuracy=before if rejected else after)
        rows.append(row)
    keys = ["user_accuracy_before", "user_accuracy_after", "gain", "golden_accuracy_after", "forgetting",
            "shipped_accuracy"]
    if golden_check is not None:
        keys.insert(4, "golden_check_accuracy_after")
    summary = {key: _spread([row[key] for row in rows]) for key in keys}
    report: dict[str, Any] = {
        "head_update": head.settings(), "simulation": asdict(settings), "max_golden_accuracy_drop": max_golden_drop,
        "pool_examples": len(pool_labels), "golden_examples": len(golden_labels),
        "golden_accuracy_before": golden_before, "summary": summary,
        "users_improved": float(np.mean([row["gain"] > 0 for row in rows])),
        "rollback_rule": "bundle golden check" if golden_check is not None else "test split",
        "updates_rejected": float(np.mean([row["rejected"] for row in rows])),
        "updates_rejected_by_test_split": float(np.mean([row["rejected_by_test_split"] for row in rows])),
        "users": rows,
    }
    if golden_check is not None:
        report.update(golden_check_examples=len(golden_check.labels),
                      golden_check_accuracy_before=golden_check.accuracy_before)
    return report


def compare_learning_rates(head: HeadUpdate, learning_rates: list[float], *args: Any,
                           **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`rehearse` (same users) at each learning rate, which an app can also set per update
    (``MLParameterKey.learningRate``, within the spec's range): mean gain, forgetting and rejections of each."""
    rows = []
    for rate in learning_rates:
        report = rehearse(replace(head, learning_rate=rate), *args, **kwargs)
        summary = report["summary"]
        rows.append({"learning_rate": rate, "gain": summary["gain"]["mean"],
                     "forgetting": summary["forgetting"]["mean"], "updates_rejected": report["updates_rejected"],
                     "user_accuracy_after": summary["user_accuracy_after"]["mean"],
                     "shipped_accuracy": summary["shipped_accuracy"]["mean"]})
    return rows


def _accuracy(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predict(weight, bias, features) == labels))


def _spread(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    low, median, high = np.percentile(array, [10, 50, 90])
    return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()), "p10": float(low),
            "median": float(median), "p90": float(high), "max": float(array.max())}


def markdown_report(report: dict[str, Any]) -> str:
    """The report's summary as a Markdown table, with the verdict on rejection."""
    names = {"user_accuracy_before": "user accuracy, before", "user_accuracy_after": "user accuracy, after",
             "gain": "gain", "golden_accuracy_after": "golden accuracy, after",
             "golden_check_accuracy_after": "golden-check accuracy, after (the app's rule)",
             "forgetting": "forgetting (golden drop)", "shipped_accuracy": "user accuracy, with rollback"}
    lines = ["| metric | mean | std | min | p10 | median | p90 | max |", "|---|---|---|---|---|---|---|---|"]
    for key, label in names.items():
        if key not in report["summary"]:
            continue
        row = report["summary"][key]
        lines.append(f"| {label} | " + " | ".join(f"{row[s]:.4f}" for s in
                                                 ("mean", "std", "min", "p10", "median", "p90", "max")) + " |")
    simulation, update = report["simulation"], report["head_update"]
    lines += ["", f"{simulation['users']} simulated users, {simulation['feedback']} feedback items each "
              f"({simulation['interest_classes']} interest classes, {simulation['interest_share']:.0%} of items), "
              f"{simulation['later_items']} later items each, label noise {simulation['label_noise']:.0%}; "
              f"update: SGD lr {update['learning_rate']}, batch {update['batch_size']}, {update['epochs']} epochs, "
              f"momentum {update['momentum']}, shuffle {update['shuffle']}.",
              f"Golden set ({report['golden_examples']} examples) accuracy before the update: "
              f"{report['golden_accuracy_before']:.4f}. Users improved: {report['users_improved']:.0%}.",
              _rejection_line(report)]
    if report.get("learning_rate_sweep"):
        lines += ["", "Same users at other learning rates (an app may pass MLParameterKey.learningRate):", "",
                  "| learning rate | mean gain | mean forgetting | rejected | user accuracy after | with rollback |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['learning_rate']:g} | {row['gain']:+.4f} | {row['forgetting']:+.4f} | "
                  f"{row['updates_rejected']:.0%} | {row['user_accuracy_after']:.4f} | {row['shipped_accuracy']:.4f} |"
                  for row in report["learning_rate_sweep"]]
    return "\n".join(lines)


def _rejection_line(report: dict[str, Any]) -> str:
    drop = report["max_golden_accuracy_drop"]
    by_split = f"golden (test split) accuracy drop > {drop}"
    if report.get("rollback_rule") != "bundle golden check":
        return f"Updates to reject ({by_split}): {report['updates_rejected']:.0%}."
    return (f"Updates the app rejects (its rollback rule: accuracy on the bundle's {report['golden_check_examples']} "
            f"golden-check examples below the fp32 {report['golden_check_accuracy_before']:.4f} - {drop}): "
            f"{report['updates_rejected']:.0%}; by the {by_split} instead: "
            f"{report['updates_rejected_by_test_split']:.0%}.")


def rollback_bundle(weight: np.ndarray, bias: np.ndarray, labels: list[str], update: dict[str, Any], *,
                    head_file: str, head_sha256: str, max_golden_drop: float, golden_ids: list[list[int]],
                    golden_labels: list[int], golden_accuracy: float) -> dict[str, Any]:
    """``personalization.json``: the original head (to restore) and the rule for rejecting an update on device."""
    return {
        "head_file": head_file, "head_sha256": head_sha256, "labels": labels, "update": update,
        "original_head": {"weight": weight.astype(np.float32).tolist(), "bias": bias.astype(np.float32).tolist(),
                          "shape": list(weight.shape)},
        "rollback": {
            "max_golden_accuracy_drop": max_golden_drop,
            "rule": "after an update, run the updated model on golden_check; if its accuracy is below "
                    "accuracy_before - max_golden_accuracy_drop, discard the update (restore the bundled model)",
            "golden_check": {"accuracy_before": golden_accuracy, "examples": [
                {"input_ids": ids, "label": label} for ids, label in zip(golden_ids, golden_labels, strict=True)]},
        },
    }
