"""The on-device update replay, simulated users, and drift monitoring, on tiny hand-checkable cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from export import coreml
from export.errors import ExportError
from export.graph import ShippedModel
from export.monitoring import (
    DriftThresholds,
    build_baseline,
    drift_check,
    kl_divergence,
    noise_floor_psi,
    population_stability_index,
)
from export.personalization import (
    GoldenCheck,
    HeadUpdate,
    UserSimulation,
    markdown_report,
    read_head_update,
    rehearse,
    replay_update,
    simulate_users,
)
from recipes.__main__ import main

LABELS = ["sports", "finance", "car"]


def tiny_shipped(hidden: int = 4) -> ShippedModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8, num_labels=len(LABELS))
    return ShippedModel(BertForSequenceClassification(config).eval(), LABELS, [], 16)


def head_from_spec(tmp_path: Path, settings: coreml.UpdatableHead) -> tuple[HeadUpdate, ShippedModel]:
    """Write the head .mlmodel as the export does, then read it back: the replay's parameters come from the spec."""
    shipped = tiny_shipped()
    path = tmp_path / "Head.mlmodel"
    coreml.save(coreml.updatable_head(shipped, settings), path)
    return read_head_update(coreml.load_spec(path)), shipped


def hand_sgd(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, *, lr: float, batch: int,
             epochs: int, momentum: float, orders: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mini-batch SGD on mean categorical cross-entropy of softmax(x W^T + b), gradients written out by hand."""
    weight, bias = weight.astype(np.float64).copy(), bias.astype(np.float64).copy()
    velocity_w, velocity_b = np.zeros_like(weight), np.zeros_like(bias)
    for epoch in range(epochs):
        order = orders[epoch]
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            logits = x[rows] @ weight.T + bias
            probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            d_logits = (probabilities - np.eye(weight.shape[0])[y[rows]]) / len(rows)  # d(mean loss)/d(logits)
            grad_w, grad_b = d_logits.T @ x[rows], d_logits.sum(axis=0)
            velocity_w, velocity_b = momentum * velocity_w + grad_w, momentum * velocity_b + grad_b
            weight, bias = weight - lr * velocity_w, bias - lr * velocity_b
    return weight, bias


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_replay_equals_hand_computed_sgd_with_the_spec_parameters(tmp_path: Path, momentum: float) -> None:
    settings = coreml.UpdatableHead(learning_rate=0.5, batch_size=2, epochs=3, momentum=momentum)
    head, shipped = head_from_spec(tmp_path, settings)
    assert (head.learning_rate, head.batch_size, head.epochs, head.momentum, head.shuffle) == (0.5, 2, 3,
                                                                                              momentum, True)
    classifier = shipped.model.classifier
    assert np.array_equal(head.weight, classifier.weight.detach().numpy())
    assert np.array_equal(head.bias, classifier.bias.detach().numpy()) and head.labels == LABELS
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)  # 5 examples: batches of 2, 2 and 1
    y = np.array([0, 2, 1, 2, 2])
    weight, bias = replay_update(head, x, y, np.random.default_rng(7))
    replay_orders = np.random.default_rng(7)
    orders = [replay_orders.permutation(5) for _ in range(3)]  # the replay shuffles every epoch (spec: shuffle)
    expected_w, expected_b = hand_sgd(head.weight, head.bias, x.astype(np.float64), y, lr=0.5, batch=2, epochs=3,
                                      momentum=momentum, orders=orders)
    assert np.abs(weight - expected_w).max() < 1e-5 and np.abs(bias - expected_b).max() < 1e-5
    assert np.abs(weight - head.weight).max() > 0.05  # the update moved the head


def test_read_head_update_refuses_what_it_cannot_replay(tmp_path: Path) -> None:
    head_model = coreml.updatable_head(tiny_shipped(), coreml.UpdatableHead())
    spec = head_model.get_spec()
    spec.neuralNetworkClassifier.updateParams.optimizer.adamOptimizer.SetInParent()
    with pytest.raises(ExportError, match="supports the SGD optimizer, the head uses adamOptimizer"):
        read_head_update(spec)
    spec.isUpdatable = False
    with pytest.raises(ExportError, match="updatable: False"):
        read_head_update(spec)


def test_simulated_users_skew_to_their_interests_without_repeating_items() -> None:
    labels = np.repeat(np.arange(8), 200)  # 8 balanced classes
    settings = UserSimulation(users=40, feedback=30, later_items=100, interest_classes=2, interest_share=0.8)
    users = simulate_users(labels, 8, settings, np.random.default_rng(0))
    shares = []
    for user in users:
        items = np.concatenate([user.feedback, user.later])
        assert len(set(items.tolist())) == 130 and len(user.interests) == 2
        assert np.array_equal(user.feedback_labels, labels[user.feedback])  # no label noise asked for
        shares.append(np.isin(labels[items], user.interests).mean())
    assert np.mean(shares) == pytest.approx(0.8 + 0.2 * 2 / 8, abs=0.03)
    noisy = simulate_users(labels, 8, UserSimulation(users=20, label_noise=0.5), np.random.default_rng(0))
    wrong = np.mean([np.mean(u.feedback_labels != labels[u.feedback]) for u in noisy])
    assert wrong == pytest.approx(0.5, abs=0.08)
    with pytest.raises(ExportError, match="needs 130 items but the held-out pool has 100"):
        simulate_users(labels[:100], 8, settings, np.random.default_rng(0))


def test_rehearsal_reports_gain_forgetting_and_rejections_consistently() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 6)) * 1.2

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, n)
        return (centers[labels] + rng.normal(size=(n, 6))).astype(np.float32), labels

    pool_x, pool_y = sample(600)
    golden_x, golden_y = sample(400)
    weight = centers.astype(np.float32)  # a decent but unadapted head: class scores = feature . center
    head = HeadUpdate(weight=weight, bias=-0.5 * (centers**2).sum(axis=1).astype(np.float32), labels=list("abcd"),
                      learning_rate=0.1, batch_size=8, epochs=10, shuffle=True)
    settings = UserSimulation(users=30, feedback=30, later_items=100, interest_classes=1, interest_share=0.9)
    report = rehearse(head, pool_x, pool_y, golden_x, golden_y, settings, max_golden_drop=0.03)
    summary = report["summary"]
    assert summary["gain"]["mean"] > 0.03  # learning a one-class prior helps that user
    assert summary["forgetting"]["mean"] > 0  # and costs accuracy on the balanced golden set
    for row in report["users"]:
        assert row["gain"] == pytest.approx(row["user_accuracy_after"] - row["user_accuracy_before"])
        assert row["rejected"] == (row["forgetting"] > 0.03)
        assert row["shipped_accuracy"] == (row["user_accuracy_before"] if row["rejected"] else
                                           row["user_accuracy_after"])
    assert report["updates_rejected"] == pytest.approx(np.mean([row["rejected"] for row in report["users"]]))
    again = rehearse(head, pool_x, pool_y, golden_x, golden_y, settings, max_golden_drop=0.03)
    assert again["summary"] == summary  # seeded: the same users and updates


def test_rehearsal_rejects_updates_by_the_bundles_golden_check() -> None:
    """The app judges an update on personalization.json's few golden-check examples against their fp32 accuracy,
    not on the whole test split: the rehearsal's rejection rate must be the app's."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 6)) * 1.2
    labels = rng.integers(0, 4, 1400)
    features = (centers[labels] + rng.normal(size=(1400, 6))).astype(np.float32)
    pool_x, pool_y, golden_x, golden_y = features[:600], labels[:600], features[600:], labels[600:]
    head = HeadUpdate(weight=centers.astype(np.float32), bias=-0.5 * (centers**2).sum(axis=1).astype(np.float32),
                      labels=list("abcd"), learning_rate=0.1, batch_size=8, epochs=10, shuffle=True)
    settings = UserSimulation(users=30, feedback=30, later_items=100, interest_classes=1, interest_share=0.9)
    check_x, check_y = golden_x[:40], golden_y[:40]  # the bundle ships a sample of the test split
    reference = float(np.mean((check_x @ head.weight.T + head.bias).argmax(axis=1) == check_y))  # fp32, as exported
    report = rehearse(head, pool_x, pool_y, golden_x, golden_y, settings, max_golden_drop=0.03,
                      golden_check=GoldenCheck(check_x, check_y, reference))
    assert report["rollback_rule"] == "bundle golden check" and report["golden_check_examples"] == 40
    assert report["golden_check_accuracy_before"] == reference
    for row in report["users"]:
        assert row["rejected"] == (row["golden_check_accuracy_after"] < reference - 0.03)
        assert row["rejected_by_test_split"] == (row["forgetting"] > 0.03)
    disagree = [row for row in report["users"] if row["rejected"] != row["rejected_by_test_split"]]
    assert disagree  # 40 examples judge differently from 800: the whole-split figure is not what the app sees
    assert report["updates_rejected"] == pytest.approx(np.mean([row["rejected"] for row in report["users"]]))
    assert report["updates_rejected"] != report["updates_rejected_by_test_split"]
    assert "Updates the app rejects (its rollback rule: accuracy on the bundle's 40 golden-check examples" in (
        markdown_report(report))


def test_psi_and_kl_match_hand_computed_values() -> None:
    base, new = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert population_stability_index(base, new) == pytest.approx(0.4 * np.log(1.8) + 0.4 * np.log(5), rel=1e-3)
    assert kl_divergence(new, base) == pytest.approx(0.9 * np.log(1.8) + 0.1 * np.log(0.2), rel=1e-3)
    assert population_stability_index(base, base) == 0.0
    assert np.isfinite(population_stability_index(np.array([0.5, 0.5, 0.0]), np.array([0.4, 0.4, 0.2])))
    assert noise_floor_psi(16, 500, 4800) == pytest.approx(15 * (1 / 500 + 1 / 4800))


def test_drift_check_flags_a_shift_and_not_a_resample() -> None:
    labels = [f"c{i}" for i in range(5)]
    rng = np.random.default_rng(0)
    golden = rng.choice(5, size=4000, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    baseline = build_baseline(golden, labels, true_labels=golden)
    same = drift_check(baseline, rng.choice(5, size=3000, p=[0.3, 0.25, 0.2, 0.15, 0.1]).tolist())
    assert same["status"] == "stable" and same["psi"] < 0.01 and "warning" not in same
    shifted = drift_check(baseline, [labels[i] for i in rng.choice(5, size=3000, p=[0.05, 0.1, 0.2, 0.25, 0.4])])
    assert shifted["status"] == shifted["psi_status"] == "significant" and shifted["psi"] > 0.25
    few = drift_check(baseline, ["c0", "c1", "c2"] * 5)
    assert "sampling noise alone" in few["warning"] and not few["reliable"] and same["reliable"]
    # the thresholds decide the status: the resample's own PSI sits just above one moderate threshold, below another
    resample = rng.choice(5, size=3000, p=[0.3, 0.25, 0.2, 0.15, 0.1]).tolist()
    psi = drift_check(baseline, resample)["psi"]
    assert psi > 0  # a resample is never exactly the baseline
    assert drift_check(baseline, resample, DriftThresholds(psi_moderate=0.9 * psi))["psi_status"] == "moderate"
    assert drift_check(baseline, resample, DriftThresholds(psi_moderate=1.1 * psi))["psi_status"] == "stable"
    # the chi-square test: a resample is no significant shift, the shifted sample is (p far below 0.01)
    assert same["p_value"] > 0.01 and not same["significant"]
    assert shifted["p_value"] < 1e-10 and shifted["significant"] and shifted["gate"]
    # news16's shape: 16 classes, 4,800 golden predictions; 200 field predictions all in one class are below the
    # noise-floor size (320+) yet a certain shift, so they may fail a job
    news16 = build_baseline(np.repeat(np.arange(16), 300), [f"k{i}" for i in range(16)])
    one_class = drift_check(news16, [0] * 200)
    assert not one_class["reliable"] and one_class["status"] == "significant"
    assert one_class["significant"] and one_class["gate"]
    assert not drift_check(news16, list(range(16)) * 12)["gate"]  # 192 predictions spread like the baseline
    with pytest.raises(ExportError, match="neither a label name nor a class id"):
        drift_check(baseline, ["c0", "nope"])


def test_drift_command_exit_codes_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = ["a", "b", "c"]
    (tmp_path / "monitoring_baseline.json").write_text(json.dumps(build_baseline([0, 1, 2] * 400, labels)))
    (tmp_path / "same.txt").write_text("\n".join(["a", "b", "c"] * 300))
    (tmp_path / "drifted.csv").write_text("prediction\n" + "\n".join(["a"] * 800 + ["b"] * 100))
    assert main(["drift", "--baseline", str(tmp_path), "--predictions", str(tmp_path / "same.txt"),
                 "--fail-on", "moderate"]) == 0
    assert "drift: stable" in capsys.readouterr().out
    report = tmp_path / "report.json"
    assert main(["drift", "--baseline", str(tmp_path), "--predictions", str(tmp_path / "drifted.csv"),
                 "--fail-on", "moderate", "--json", str(report)]) == 1
    assert "drift: significant" in capsys.readouterr().out
    assert json.loads(report.read_text())["psi"] > 0.25
    # 30 predictions all in one class: too few for PSI's noise floor, but the shift is significant and fails the job
    (tmp_path / "one_class.txt").write_text("a\n" * 30)
    assert main(["drift", "--baseline", str(tmp_path), "--predictions", str(tmp_path / "one_class.txt"),
                 "--fail-on", "significant", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert "drift: significant (few predictions, but the shift is significant: chi-square p=" in out
    checked = json.loads(report.read_text())
    assert not checked["reliable"] and checked["significant"] and checked["p_value"] < 1e-8
    # 30 predictions whose PSI crosses 0.10 by chance: moderate by the thresholds, not significant: the job passes
    (tmp_path / "noisy.txt").write_text("\n".join(["a"] * 15 + ["b"] * 8 + ["c"] * 7))
    assert main(["drift", "--baseline", str(tmp_path), "--predictions", str(tmp_path / "noisy.txt"),
                 "--fail-on", "moderate", "--json", str(report)]) == 0
    assert ("drift: moderate (unreliable: too few predictions; the shift is not significant: chi-square p=0.1"
            in capsys.readouterr().out)
    assert json.loads(report.read_text())["psi"] == pytest.approx(
        population_stability_index(np.full(3, 1 / 3), np.array([15, 8, 7]) / 30), rel=1e-6)
    (tmp_path / "bad.txt").write_text("a\nzebra\n")
    assert main(["drift", "--baseline", str(tmp_path), "--predictions", str(tmp_path / "bad.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prediction 2 is 'zebra'") and "\n" not in err
    assert main(["drift", "--baseline", str(tmp_path / "nowhere"), "--predictions", str(tmp_path / "bad.txt")]) == 2
    assert "no monitoring_baseline.json" in capsys.readouterr().err


def test_top_level_help_lists_the_tools(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "usage: python -m recipes" in out
    for tool in ("export", "sweep", "personalize", "drift", "fit, validate, test, predict"):
        assert tool in out


def test_rehearsal_refuses_a_checkpoint_whose_head_differs_even_only_in_its_bias(tmp_path: Path) -> None:
    from lightning_modules.checkpoints import ExportableModel
    from lightning_modules.errors import PocketbertError
    from recipes.tools.personalize import check_same_model

    head, shipped = head_from_spec(tmp_path, coreml.UpdatableHead())
    exportable = ExportableModel(shipped.model, LABELS, [], 16)
    check_same_model(head, exportable, tmp_path / "best.ckpt")  # the checkpoint the bundle came from
    with torch.no_grad():
        shipped.model.classifier.bias[1] += 0.5  # e.g. another epoch's checkpoint: same weight, other bias
    with pytest.raises(PocketbertError, match=r"the exported head does not match .*best\.ckpt \(labels or classifier "
                                              r"weights or bias differ\)"):
        check_same_model(head, exportable, tmp_path / "best.ckpt")
