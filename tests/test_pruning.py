"""Pruning: magnitude masks and their schedule, structured head/neuron removal, and a pruned tiny student fitted
through the CLI whose exports carry the pruning (config sizes, zeros, Core ML's sparse weights)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from export import ExportError
from export.baseline import BASELINE
from export.coreml import describe, load_spec
from export.graph import ShippedModel, load_hf_dir
from export.ngram_bert import NgramBertConfig, NgramBertForSequenceClassification
from export.onnx_export import export_onnx, onnx_session
from export.pruning import (
    apply_masks,
    cubic_sparsity,
    head_importance,
    magnitude_masks,
    prunable_weights,
    prune_structure,
    sparsity_report,
)
from export.torch_export import save_pytorch
from lightning_modules.checkpoints import load_exportable
from tests.conftest import REPO


def tiny_student(seed: int = 0) -> NgramBertForSequenceClassification:
    torch.manual_seed(seed)
    config = NgramBertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64, ngram_orders=[2], ngram_buckets=97,
                             pooling="mean", ngram_bag=True, num_labels=3)
    return NgramBertForSequenceClassification(config).eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 300, (4, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2:, 7:] = 0
    return ids, mask


def test_global_and_per_layer_masks_zero_exactly_the_share_asked_and_only_grow() -> None:
    model = tiny_student()
    weights = prunable_weights(model)
    assert "classifier.weight" not in weights and "bert.embeddings.position_embeddings.weight" not in weights
    assert {"bert.embeddings.word_embeddings.weight", "bert.embeddings.ngram.table.weight",
            "bert.encoder.layer.0.attention.self.query.weight", "bert.pooler.dense.weight"} <= set(weights)
    classifier = model.classifier.weight.detach().clone()
    apply_masks(weights, magnitude_masks(weights, 0.3, "layer"))
    for name, weight in weights.items():  # each matrix: its own 30%
        assert int((weight == 0).sum()) == int(0.3 * weight.numel()), name
    zero_before = {name: weight == 0 for name, weight in weights.items()}
    apply_masks(weights, magnitude_masks(weights, 0.5, "global"))
    total = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == int(0.5 * total)  # one threshold over all
    assert all(bool((weights[name][was] == 0).all()) for name, was in zero_before.items())  # masks only grow
    assert torch.equal(model.classifier.weight, classifier)
    report = sparsity_report(model)
    assert report["prunable_sparsity"] == pytest.approx(0.5, abs=1 / total)
    assert 0 < report["model_sparsity"] < 0.5  # biases, LayerNorm, classifier and positions stay
    without = prunable_weights(model, include_embeddings=False)
    assert not any("embeddings.word" in name or "ngram.table" in name for name in without)


def test_cubic_schedule_starts_at_zero_rises_fast_and_holds_the_target() -> None:
    assert cubic_sparsity(0, 100, 0.5) == 0.0
    assert cubic_sparsity(50, 100, 0.5) == pytest.approx(0.5 * (1 - 0.5**3))
    assert cubic_sparsity(100, 100, 0.5) == 0.5 and cubic_sparsity(250, 100, 0.5) == 0.5


def test_structured_pruning_equals_zeroing_the_removed_heads_and_neurons() -> None:
    model = tiny_student()
    with torch.no_grad():  # make head 2 of layer 0 the weakest, so it is the one removed
        for name in ("query", "key", "value"):
            getattr(model.bert.encoder.layer[0].attention.self, name).weight[16:24] *= 0.01
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 16:24] *= 0.01
    assert int(torch.stack(head_importance(model)).argmin()) == 2
    reference = copy.deepcopy(model)
    report = prune_structure(model, 0.3)
    assert sum(report["layer_heads"]) == 6 and report["layer_intermediate_sizes"] == [45, 45]  # 2 of 8 heads; 30%
    assert model.config.layer_heads == report["layer_heads"]
    assert report["parameters_after"] == sum(p.numel() for p in model.parameters()) < report["parameters_before"]
    # the same computation in the full-size model: removed heads' output columns and removed neurons' columns zeroed
    head_size, removed_heads = 8, []
    with torch.no_grad():
        for index, (full, pruned) in enumerate(zip(reference.bert.encoder.layer, model.bert.encoder.layer,
                                                   strict=True)):
            kept_rows = {tuple(row.tolist()) for row in pruned.attention.self.query.weight}
            for h in range(4):
                if tuple(full.attention.self.query.weight[h * head_size].tolist()) not in kept_rows:
                    removed_heads.append((index, h))
                    full.attention.output.dense.weight[:, h * head_size:(h + 1) * head_size] = 0
            kept = {tuple(col.tolist()) for col in pruned.output.dense.weight.T}
            for n in range(64):
                if tuple(full.output.dense.weight[:, n].tolist()) not in kept:
                    full.output.dense.weight[:, n] = 0
    assert (0, 2) in removed_heads and len(removed_heads) == 2
    ids, mask = inputs()
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_structurally_pruned_model_saves_loads_and_exports(tmp_path: Path) -> None:
    model = tiny_student()
    prune_structure(model, 0.5)
    ids, mask = inputs()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits.numpy()
    shipped = ShippedModel(model, ["a", "b", "c"], [str(i) for i in range(300)], 64)
    save_pytorch(shipped, tmp_path / "pytorch")
    saved = json.loads((tmp_path / "pytorch" / "config.json").read_text())
    assert sum(saved["layer_heads"]) == 4 and saved["layer_intermediate_sizes"] == [32, 32]  # half of 8 heads
    reloaded = load_hf_dir(tmp_path / "pytorch")
    assert reloaded.bert.encoder.layer[1].intermediate.dense.out_features == 32
    with torch.inference_mode():
        assert np.abs(reloaded(input_ids=ids, attention_mask=mask).logits.numpy() - logits).max() < 1e-6
    export_onnx(shipped, tmp_path / "model.onnx")
    onnx_logits = onnx_session(tmp_path / "model.onnx").run(["logits"], {"input_ids": ids.numpy(),
                                                                        "attention_mask": mask.numpy()})[0]
    assert np.abs(onnx_logits - logits).max() < 1e-5


def test_structured_pruning_refuses_models_that_cannot_record_it() -> None:
    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ExportError, match="structured pruning needs an ngram_bert student"):
        prune_structure(bert, 0.3)
    with pytest.raises(ValueError, match="layer_heads needs one positive size per layer"):
        NgramBertConfig(num_hidden_layers=2, layer_heads=[1])


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tests/configs/prune_tiny.yaml through the CLI: structured 50% at setup, then gradual magnitude pruning to 50%
    within the first epoch, and the exports (ONNX, Core ML dense and sparse on iOS18)."""
    root = tmp_path_factory.mktemp("prune_run")
    done = subprocess.run([sys.executable, "-m", "recipes", "fit", "--config",
                           str(REPO / "tests" / "configs" / "prune_tiny.yaml"),
                           "--trainer.logger.init_args.save_dir", str(root / "tb"),
                           "--data.init_args.cache_dir", str(root / "cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = root / "tb" / "prune_tiny" / "version_0"
    return {"run_dir": run_dir, "export": run_dir / "export", "stdout": done.stdout, "stderr": done.stderr,
            "manifest": json.loads((run_dir / "export" / "manifest.json").read_text())}


def test_pruned_fit_ships_smaller_matrices_and_the_full_sparsity(pruned_run: dict[str, Any]) -> None:
    checkpoint = json.loads((pruned_run["run_dir"] / "test_metrics.json").read_text())["best_checkpoint"]
    model = load_exportable(checkpoint).model
    assert model.config.layer_heads == [1] and model.config.layer_intermediate_sizes == [64]  # 2 heads, 128 -> half
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 32
    report = sparsity_report(model)
    assert report["prunable_sparsity"] == pytest.approx(0.5, abs=1e-4)  # the best checkpoint is fully pruned
    output = pruned_run["stdout"] + pruned_run["stderr"]
    assert "structured pruning 50%: heads per layer [1], FFN neurons per layer [64]" in output
    assert "magnitude pruning (global, gradual): 50.0% of the prunable weights" in output
    exported = load_hf_dir(pruned_run["export"] / "pytorch")
    assert sparsity_report(exported)["prunable_sparsity"] == pytest.approx(0.5, abs=1e-4)
    onnx = pruned_run["manifest"]["artifacts"]["onnx_fp32"]["parity_vs_pytorch"]
    assert onnx["agreement"] == 1.0 and onnx["max_abs_logit_diff"] < 1e-4


def test_core_ml_sparse_weights_carry_the_zeros_to_the_app(pruned_run: dict[str, Any]) -> None:
    artifacts = pruned_run["manifest"]["artifacts"]
    sparse, dense = artifacts["coreml_sparse"], artifacts["coreml"]
    # the token and n-gram tables and both FFN matrices at least (matrices of 2,048 weights or fewer stay dense)
    assert sparse["sparse_ops"] >= 4 and sparse["prunable_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert sparse["bytes"] < 0.75 * dense["bytes"]  # fp16 + 1 mask bit per weight instead of 16 bits
    assert artifacts["coreml_sparse_w8"]["bytes"] < 0.8 * artifacts["coreml_w8"]["bytes"]
    info = describe(load_spec(pruned_run["export"] / sparse["path"]))
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"] and info["type"] == "mlProgram"
    report = json.loads((pruned_run["export"] / "benchmark.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert rows["coreml_sparse"]["size_mb"] == pytest.approx(sparse["bytes"] / 1e6)
    assert rows["coreml_sparse_w8"]["simulated_accuracy"] == artifacts["coreml_w8"]["simulated_in_pytorch"]["accuracy"]


def test_prune_recipe_without_a_trained_student_names_the_run_to_make_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from recipes.__main__ import main

    monkeypatch.chdir(tmp_path)  # no tb_logs/ here
    assert main(["fit", "--config", "news16_prune_cpu.yaml"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: tokenizer path '") and last.endswith(
        "tb_logs/news16_distill_cpu/latest/export/vocab.txt' does not exist: run python -m recipes fit --config "
        "news16_distill_cpu.yaml first")


BASELINE_ROW = {"variant": BASELINE, "format": "sklearn", "model": "TF-IDF char 1-2-grams + LinearSVC(C=0.5)",
                "size_mb": 1.23, "parameters": 800_016, "accuracy": 0.7740, "macro_f1": 0.7702, "train_examples": 11200}


def fake_export(folder: Path, baseline: dict[str, Any] | None) -> Path:
    """What ``benchmarks/pruning.py`` reads of a run's export: its benchmark (with the baseline row when given: runs
    benchmarked before it existed have none), manifest and model config."""
    export_dir = folder / "export"
    (export_dir / "pytorch").mkdir(parents=True)
    variants = [{"variant": "pytorch_fp32", "accuracy": 0.7800, "size_mb": 9.1},
                {"variant": "onnx_int8", "accuracy": 0.7769, "macro_f1": 0.7731, "size_mb": 2.5},
                {"variant": "coreml", "size_mb": 4.6}, *([baseline] if baseline else [])]
    (export_dir / "benchmark.json").write_text(json.dumps({"variants": variants}))
    (export_dir / "manifest.json").write_text(json.dumps({"parameters": 2_345_678, "artifacts": {}}))
    (export_dir / "pytorch" / "config.json").write_text("{}")
    return export_dir


def test_pruning_table_shows_the_baseline_and_each_runs_lead_over_it(tmp_path: Path) -> None:
    from benchmarks.pruning import markdown, summarize

    summaries = [summarize("no pruning", fake_export(tmp_path / "new", BASELINE_ROW)),
                 summarize("old run", fake_export(tmp_path / "old", None))]
    for summary in summaries:
        summary["onnx_ms"] = {"int8": {32: 1.0, 128: 2.0}, "fp32": {32: 3.0, 128: 4.0}}
    lines = markdown(summaries).splitlines()
    assert "vs baseline fp32 / INT8 (pts)" in lines[0]
    assert lines[2].startswith("| linear baseline: TF-IDF char 1-2-grams + LinearSVC(C=0.5) (scikit-learn, 1.23 MB) | "
                               "800,016 |") and "| 0.7740 | 0.7740 | - |" in lines[2]
    assert "| 0.7800 | 0.7769 | +0.60 / +0.29 |" in lines[3]
    assert "| 0.7800 | 0.7769 | - / - |" in lines[4]  # a run benchmarked before the baseline row: no lead, no crash
    assert summaries[0]["vs_baseline_points"]["int8"] == pytest.approx(0.29)
    assert summaries[0]["baseline"]["accuracy"] == 0.7740 and summaries[1]["baseline"] is None
    assert markdown(summaries[1:]).splitlines()[2] == "| linear baseline (not in these runs' benchmark.json) | " + \
        " | ".join(["-"] * 12) + " |"
