"""Prediction-drift monitoring: a baseline of predicted classes, and PSI / KL checks of new predictions against it.

The baseline is the shipped model's predicted-class distribution on the golden (test) set, written at export time
into the bundle (``monitoring_baseline.json``). An app or a server collects the classes the model predicts in the
field and compares their distribution with the baseline:

* **PSI**, the population stability index: ``sum((new - base) * ln(new / base))`` over classes. It is the
  symmetric (Jeffreys) divergence ``KL(new||base) + KL(base||new)``. The thresholds are the usual credit-risk ones:
  below 0.10 stable, 0.10 to 0.25 a moderate shift worth a look, 0.25 or more a significant shift.
* **KL**, ``KL(new || base)``: about half the PSI for small shifts, so its thresholds are half of PSI's
  (0.05 and 0.125).

Empty classes are floored at ``EPSILON`` before taking logarithms. A sample of ``n`` predictions drawn from the
baseline itself already has an expected PSI of about ``(k - 1) * (1/n + 1/N)`` for ``k`` classes and a baseline of
``N`` predictions; the check reports this noise floor and warns when it is too close to the thresholds to trust.
Below that size PSI alone cannot tell drift from noise, so the check also runs a chi-square test of homogeneity on
the two count tables (baseline vs new predictions): a shift that this test finds significant is real drift however
few the predictions (200 predictions all in one class), while a noisy small sample that merely crosses a threshold
is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import chi2_contingency

from export.errors import ExportError

EPSILON = 1e-4
SIGNIFICANCE = 0.01  # p-value below which the chi-square test calls a shift real (not sampling noise)
Status = Literal["stable", "moderate", "significant"]
SEVERITY: dict[Status, int] = {"stable": 0, "moderate": 1, "significant": 2}


@dataclass(frozen=True)
class DriftThresholds:
    """Where a divergence turns from stable to moderate and from moderate to significant drift."""

    psi_moderate: float = 0.10
    psi_significant: float = 0.25
    kl_moderate: float = 0.05
    kl_significant: float = 0.125

    def status(self, psi: float, kl: float) -> tuple[Status, Status]:
        return (_grade(psi, self.psi_moderate, self.psi_significant),
                _grade(kl, self.kl_moderate, self.kl_significant))


def _grade(value: float, moderate: float, significant: float) -> Status:
    return "significant" if value >= significant else "moderate" if value >= moderate else "stable"


def class_counts(predicted: Sequence[int] | np.ndarray, num_labels: int) -> np.ndarray:
    """How many of ``predicted`` class ids fall in each class, shape (num_labels,)."""
    ids = np.asarray(predicted, dtype=np.int64)
    if ids.size == 0:
        raise ExportError("no predictions to compare with the baseline; collect some first")
    if ids.min() < 0 or ids.max() >= num_labels:
        raise ExportError(f"prediction ids must be in [0, {num_labels}), got {int(ids.min())}..{int(ids.max())}")
    return np.bincount(ids, minlength=num_labels)


def class_distribution(predicted: Sequence[int] | np.ndarray, num_labels: int) -> np.ndarray:
    """Share of each class among ``predicted`` class ids, shape (num_labels,)."""
    counts = class_counts(predicted, num_labels)
    return counts / counts.sum()


def psi_terms(baseline: np.ndarray, new: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """Each class's share of the PSI, shape (num_labels,)."""
    base, current = _floored(baseline, epsilon), _floored(new, epsilon)
    return (current - base) * np.log(current / base)


def population_stability_index(baseline: np.ndarray, new: np.ndarray, epsilon: float = EPSILON) -> float:
    return float(np.sum(psi_terms(baseline, new, epsilon)))


def kl_divergence(new: np.ndarray, baseline: np.ndarray, epsilon: float = EPSILON) -> float:
    """``KL(new || baseline)`` in nats."""
    base, current = _floored(baseline, epsilon), _floored(new, epsilon)
    return float(np.sum(current * np.log(current / base)))


def _floored(distribution: np.ndarray, epsilon: float) -> np.ndarray:
    floored = np.maximum(np.asarray(distribution, dtype=np.float64), epsilon)
    return floored / floored.sum()


def noise_floor_psi(classes: int, predictions: int, baseline_predictions: int) -> float:
    """Expected PSI between two samples of one distribution (no drift): ``(k - 1) * (1/n + 1/N)``."""
    return (classes - 1) * (1.0 / predictions + 1.0 / baseline_predictions)


def build_baseline(predicted: Sequence[int] | np.ndarray, label_names: list[str], *,
                   true_labels: Sequence[int] | np.ndarray | None = None, source: str = "",
                   thresholds: DriftThresholds = DriftThresholds()) -> dict[str, Any]:
    """The JSON payload of ``monitoring_baseline.json``: predicted (and true) class shares on the golden set."""
    counts = class_counts(predicted, len(label_names))
    shares = counts / counts.sum()
    payload: dict[str, Any] = {
        "labels": list(label_names), "predictions": int(counts.sum()),
        "predicted_counts": counts.tolist(), "predicted_distribution": shares.tolist(),
        "source": source, "thresholds": asdict(thresholds), "epsilon": EPSILON,
    }
    if true_labels is not None:
        payload["true_distribution"] = class_distribution(true_labels, len(label_names)).tolist()
    return payload


def prediction_ids(predictions: Sequence[int | str], label_names: list[str]) -> list[int]:
    """Class ids from predicted label names or ids (strings of digits count as ids only if no label has that name)."""
    index = {name: i for i, name in enumerate(label_names)}
    ids = []
    for position, value in enumerate(predictions):
        if isinstance(value, str) and value in index:
            ids.append(index[value])
        elif isinstance(value, int | np.integer) or (isinstance(value, str) and value.strip().isdigit()):
            ids.append(int(value))
        else:
            raise ExportError(f"prediction {position + 1} is {value!r}, neither a label name nor a class id; labels "
                              f"are {', '.join(label_names)}")
        if not 0 <= ids[-1] < len(label_names):
            raise ExportError(f"prediction {position + 1} is class id {ids[-1]}, outside [0, {len(label_names)})")
    return ids


def shift_p_value(baseline_counts: np.ndarray, new_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors (num_labels,): (statistic, p-value) of "both samples come
    from one distribution". Classes empty in both are left out; one class in all gives (0, 1)."""
    table = np.stack([np.asarray(baseline_counts, dtype=np.float64), np.asarray(new_counts, dtype=np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    statistic, p_value, _, _ = chi2_contingency(table, correction=False)
    return float(statistic), float(p_value)


def drift_check(baseline: dict[str, Any], predictions: Sequence[int | str],
                thresholds: DriftThresholds | None = None, significance: float = SIGNIFICANCE) -> dict[str, Any]:
    """Compare new predictions (label names or ids) with a baseline from :func:`build_baseline`.

    Returns PSI, KL, their statuses and the overall one (the worse of the two), the noise floor of PSI for this
    many predictions, ``reliable`` (false, with a warning, when that floor exceeds half the moderate threshold:
    sampling noise alone could raise the status), the chi-square test of the shift (``p_value``, ``significant``
    below ``significance``), ``gate`` (whether the status may fail a job: reliable, or the shift is significant),
    and per-class shares.
    """
    labels: list[str] = list(baseline["labels"])
    limits = thresholds or DriftThresholds(**baseline.get("thresholds", {}))
    ids = prediction_ids(predictions, labels)
    base = np.asarray(baseline["predicted_distribution"], dtype=np.float64)
    new = class_distribution(ids, len(labels))
    epsilon = float(baseline.get("epsilon", EPSILON))
    psi, kl = population_stability_index(base, new, epsilon), kl_divergence(new, base, epsilon)
    psi_status, kl_status = limits.status(psi, kl)
    overall = max(psi_status, kl_status, key=SEVERITY.__getitem__)
    classes = int(np.count_nonzero(base)) or len(labels)
    floor = noise_floor_psi(classes, len(ids), int(baseline["predictions"]))
    report: dict[str, Any] = {
        "predictions": len(ids), "psi": psi, "kl": kl, "psi_status": psi_status, "kl_status": kl_status,
        "status": overall, "psi_noise_floor": floor, "thresholds": asdict(limits),
        "per_class": [{"label": label, "baseline": float(b), "new": float(n), "psi_term": float(term)}
                      for label, b, n, term in zip(labels, base, new, psi_terms(base, new, epsilon), strict=True)],
    }
    report["reliable"] = floor <= limits.psi_moderate / 2
    base_counts = baseline.get("predicted_counts")
    if base_counts is None:  # older baselines: counts from shares
        base_counts = np.rint(base * int(baseline["predictions"]))
    statistic, p_value = shift_p_value(np.asarray(base_counts), class_counts(ids, len(labels)))
    report.update(chi_square=statistic, p_value=p_value, significance=significance,
                  significant=p_value < significance)
    # PSI's thresholds decide the status; on a small sample only a statistically significant shift may fail a job
    report["gate"] = report["reliable"] or report["significant"]
    if not report["reliable"]:
        needed = _predictions_needed(classes, int(baseline["predictions"]), limits.psi_moderate / 2)
        report["warning"] = (f"only {len(ids)} predictions: sampling noise alone gives PSI ~{floor:.3f}; "
                             f"collect {needed or 'more'}+ for a reliable check")
    return report


def _predictions_needed(classes: int, baseline_predictions: int, target_floor: float) -> int | None:
    """Smallest n whose noise floor is at most ``target_floor`` (None when the baseline alone is noisier)."""
    room = target_floor / (classes - 1) - 1.0 / baseline_predictions if classes > 1 else 1.0
    return int(np.ceil(1.0 / room)) if room > 0 else None
