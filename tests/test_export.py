"""Fit-end exports end to end: one tiny recipe fitted through the CLI, every artifact loaded back and checked.

The recipe (tests/configs/export_tiny.yaml) trains a tiny BERT on a real 4-class slice, runs every export
callback and breaks a size budget on purpose, so one run checks the artifacts and that a broken budget fails the
run after the reports are written.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

from export.coreml import describe, load_spec
from export.files import sha256_of
from export.torch_export import load_torchscript
from lightning_modules.datamodule import NewsDataModule
from lightning_modules.hub import load_tokenizer, read_vocab_file
from recipes.__main__ import main
from tests.conftest import REPO

CONFIG = REPO / "tests" / "configs" / "export_tiny.yaml"
LABELS = ["sports", "finance", "car", "game"]
MODELS = ["pytorch_fp32", "pytorch_int8", "onnx_fp32", "onnx_int8", "coreml", "coreml_w8", "coreml_personalizable"]


@pytest.fixture(scope="module")
def run(export_run: dict[str, Any]) -> dict[str, Any]:
    """The export_tiny recipe fitted once per session (tests/conftest.py; test_classify.py reads it too)."""
    return export_run


@pytest.fixture(scope="module")
def test_batches(run: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The recipe's real test split, rebuilt from its config (what the exports were checked on)."""
    data = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    datamodule = NewsDataModule(**{**data, "cache_dir": run["root"] / "cache"})
    return list(datamodule.test_dataloader())


def logits_of(predict: Any, batches: list[dict[str, torch.Tensor]]) -> np.ndarray:
    return np.concatenate([predict(b["input_ids"].numpy(), b["attention_mask"].numpy()) for b in batches])


def test_broken_budget_fails_the_run_after_writing_reports(run: dict[str, Any]) -> None:
    assert run["code"] == 2, run["stderr"][-2000:]
    last = run["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: export budget broken: onnx_fp32 is ") and "> max_size_mb 0.5" in last
    report = json.loads((run["export"] / "benchmark.json").read_text())
    assert report["broken_budgets"] and report["broken_budgets"][0].startswith("onnx_fp32 is")
    assert "| onnx_int8 | onnx |" in (run["export"] / "benchmark.md").read_text()


def test_benchmark_marks_the_shipped_variant_and_prints_the_budget_verdict(run: dict[str, Any]) -> None:
    report = json.loads((run["export"] / "benchmark.json").read_text())
    assert report["shipped"] == "onnx_fp32"  # the first (only) of the recipe's budgets.variants
    row = next(r for r in report["variants"] if r["variant"] == "onnx_fp32")
    verdict = (f"budget onnx_fp32: size {row['size_mb']:.2f} MB > 0.5 FAIL; accuracy drop "
               f"{row['accuracy_drop_points']:.2f} pts <= 100.0 OK -> FAIL")
    assert report["budget_verdicts"] == [verdict]  # only the budgets set, only the variants they apply to
    assert verdict in run["stdout"] and "shipped: onnx_fp32 (the first of budgets.variants" in run["stdout"]
    assert "shipped: onnx_fp32" in (run["export"] / "benchmark.md").read_text()


def test_run_output_carries_no_third_party_noise(run: dict[str, Any]) -> None:
    output = run["stdout"] + run["stderr"]
    assert "litlogger" not in output and "litmodels" not in output  # Lightning's advertising tip
    assert "Running MIL" not in output and "Running compression pass" not in output  # coremltools bars
    assert "Loading weights" not in output and "Writing model shards" not in output  # transformers bars
    assert "FLOPs" not in output and "v_num" not in output
    assert output.count("LeafSpec") == 0  # lightning's _pytree FutureWarning, silenced at its source
    assert "USDT:" not in output and "profiler_start" not in output  # torch.profiler's kineto lines


def test_manifest_records_every_artifact_with_size_and_hash(run: dict[str, Any]) -> None:
    artifacts = run["manifest"]["artifacts"]
    assert set(MODELS) | {"coreml_encoder", "coreml_head", "vocab", "labels", "golden_tokens"} <= set(artifacts)
    for name, entry in artifacts.items():
        path = run["export"] / entry["path"]
        assert path.exists(), name
        assert entry["sha256"] == sha256_of(path), name
    assert not [p for p in run["export"].rglob("*") if ".tmp-" in p.name or ".old-" in p.name]  # atomic writes
    assert Path(run["manifest"]["source_checkpoint"]).is_file()
    assert run["manifest"]["label_names"] == LABELS


def test_onnx_has_dynamic_axes_and_matches_pytorch_on_the_real_test_set(
    run: dict[str, Any], test_batches: list[dict[str, torch.Tensor]]
) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(str(run["export"] / "pytorch")).eval()
    assert model.config.id2label == dict(enumerate(LABELS))

    def torch_predict(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()

    reference = logits_of(torch_predict, test_batches)
    labels = np.concatenate([b["labels"].numpy() for b in test_batches])
    assert (reference.argmax(-1) == labels).mean() > 0.4  # learned something: chance is 0.25
    session = ort.InferenceSession(str(run["export"] / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "seq"], ["batch", "seq"]]
    onnx_logits = logits_of(lambda i, m: session.run(["logits"], {"input_ids": i, "attention_mask": m})[0],
                            test_batches)
    assert np.abs(onnx_logits - reference).max() < 1e-4
    assert (onnx_logits.argmax(-1) == reference.argmax(-1)).mean() >= 0.999
    int8 = ort.InferenceSession(str(run["export"] / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    int8_logits = logits_of(lambda i, m: int8.run(["logits"], {"input_ids": i, "attention_mask": m})[0], test_batches)
    agreement = (int8_logits.argmax(-1) == reference.argmax(-1)).mean()
    assert agreement >= 0.85 and 0 < np.abs(int8_logits - reference).max() < 1.0  # quantized, yet close
    recorded = run["manifest"]["artifacts"]["onnx_int8"]["parity_vs_pytorch"]
    assert recorded["agreement"] == pytest.approx(agreement)
    assert (run["export"] / "model.int8.onnx").stat().st_size < 0.4 * (run["export"] / "model.onnx").stat().st_size


def test_pytorch_int8_loads_back_and_agrees(run: dict[str, Any], test_batches: list[dict[str, torch.Tensor]]) -> None:
    int8 = load_torchscript(run["export"] / "model.int8.pt")
    assert "quantized" in str(int8.graph)  # dynamic int8 Linear kernels, not fp32 ones

    def predict(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return int8(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    logits = logits_of(predict, test_batches)
    recorded = run["manifest"]["artifacts"]["pytorch_int8"]
    labels = np.concatenate([b["labels"].numpy() for b in test_batches])
    assert recorded["accuracy"] == pytest.approx((logits.argmax(-1) == labels).mean())
    assert recorded["parity_vs_pytorch"]["agreement"] >= 0.85


def test_coreml_program_spec_io_and_metadata(run: dict[str, Any]) -> None:
    spec = load_spec(run["export"] / "PocketBert.mlpackage")
    info = describe(spec)
    assert info["type"] == "mlProgram" and info["specification_version"] == 8  # iOS17
    assert [(i["name"], i["dtype"], i["shape"], i["shape_range"]) for i in info["inputs"]] == [
        ("input_ids", "INT32", [1, 32], [[1, 1], [8, 32]]), ("attention_mask", "INT32", [1, 32], [[1, 1], [8, 32]])]
    assert [(o["name"], o["dtype"]) for o in info["outputs"]] == [("logits", "FLOAT32")]
    metadata = dict(spec.description.metadata.userDefined)
    assert json.loads(metadata["labels"]) == LABELS
    tokenizer = json.loads(metadata["tokenizer"])
    assert tokenizer["vocab_size"] == 21128 and tokenizer["max_length"] == 32 and tokenizer["lowercase"] is True
    entry = run["manifest"]["artifacts"]["coreml"]
    assert entry["compute_units"] == "CPU_AND_NE" and entry["target"] == "iOS17"
    parity = entry["graph_parity_vs_pytorch"]  # the torch.export'ed program that was converted vs the HF model
    assert parity["examples"] == 8 and parity["max_abs_logit_diff"] < 1e-4 and parity["agreement"] == 1.0
    w8 = load_spec(run["export"] / "PocketBert8Bit.mlpackage")
    ops = {op.type for block in w8.mlProgram.functions["main"].block_specializations.values()
           for op in block.operations}
    assert ops & {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"}  # int8 weights in the file
    assert run["manifest"]["artifacts"]["coreml_w8"]["bytes"] < 0.65 * entry["bytes"]


def test_personalizable_pipeline_is_updatable_and_starts_from_the_trained_head(run: dict[str, Any]) -> None:
    info = describe(load_spec(run["export"] / "PocketBertPersonalizable.mlpackage"))
    assert info["type"] == "pipelineClassifier" and info["is_updatable"]
    assert [t["name"] for t in info["training_inputs"]] == ["input_ids", "attention_mask", "label"]
    encoder, head = info["models"]
    assert encoder["type"] == "mlProgram" and not encoder["is_updatable"]
    assert encoder["outputs"][0]["name"] == "features" and encoder["outputs"][0]["dtype"] == "FLOAT32"
    assert head["type"] == "neuralNetworkClassifier" and head["is_updatable"]
    assert head["inputs"][0]["shape"] == encoder["outputs"][0]["shape"] == [64]
    assert [(layer["type"], layer["updatable"]) for layer in head["layers"]] == [("innerProduct", True),
                                                                                 ("softmax", False)]
    assert head["loss"] == [{"name": "loss", "type": "categoricalCrossEntropyLossLayer"}]
    assert head["optimizer"] == {"type": "sgdOptimizer", "learning_rate": 0.05, "batch_size": 4, "momentum": 0.0}
    assert head["epochs"] == 3
    head_spec = load_spec(run["export"] / "PocketBertHead.mlmodel")
    assert list(head_spec.neuralNetworkClassifier.stringClassLabels.vector) == LABELS
    layer = head_spec.neuralNetworkClassifier.layers[0].innerProduct
    trained = AutoModelForSequenceClassification.from_pretrained(str(run["export"] / "pytorch")).classifier
    assert np.allclose(np.asarray(layer.weights.floatValue).reshape(4, 64), trained.weight.detach().numpy())
    parity = run["manifest"]["artifacts"]["coreml_personalizable"]["pipeline_parity_vs_pytorch"]
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["agreement"] == 1.0


def test_app_assets_match_the_model_vocab_and_training_tokenizer(run: dict[str, Any], vocab_file: Path) -> None:
    vocab = (run["export"] / "vocab.txt").read_text("utf-8").split("\n")  # not splitlines(): tokens hold U+2028
    assert vocab == list(read_vocab_file(vocab_file)) and len(vocab) == 21128
    assert json.loads((run["export"] / "labels.json").read_text()) == LABELS
    golden = json.loads((run["export"] / "golden_tokens.json").read_text())
    training_tokenizer = load_tokenizer(vocab_file)
    assert len(golden["cases"]) == 7 + 4  # edge cases + golden_samples test headlines
    for case in golden["cases"]:
        ids = case["input_ids"]
        assert ids == training_tokenizer(case["normalized"], truncation=True, max_length=32)["input_ids"]
        assert [vocab[i] for i in ids] == case["tokens"] and ids[0] == 101 and ids[-1] == 102
    by_text = {case["text"]: case for case in golden["cases"]}
    assert by_text["ＮＢＡ总决赛：勇士ｖｓ凯尔特人　１２３"]["tokens"][1:5] == ["nba", "总", "决", "赛"]  # NFKC + lower
    assert len(by_text["中国" * 200]["input_ids"]) == 32
    assert run["manifest"]["artifacts"]["golden_tokens"]["vocab_tokenizer_matches_test_ids"] == 1.0


def test_bundle_holds_the_monitoring_baseline_and_the_original_head(
        run: dict[str, Any], test_batches: list[dict[str, torch.Tensor]]) -> None:
    export, artifacts = run["export"], run["manifest"]["artifacts"]
    model = AutoModelForSequenceClassification.from_pretrained(str(export / "pytorch")).eval()
    with torch.inference_mode():
        predicted = np.concatenate([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                                    .argmax(dim=1).numpy() for b in test_batches])
    baseline = json.loads((export / "monitoring_baseline.json").read_text())
    assert baseline["labels"] == LABELS and baseline["predictions"] == len(predicted)
    assert baseline["predicted_counts"] == np.bincount(predicted, minlength=4).tolist()
    assert sum(baseline["predicted_distribution"]) == pytest.approx(1.0)
    assert artifacts["monitoring_baseline"]["sha256"] == sha256_of(export / "monitoring_baseline.json")

    bundle = json.loads((export / "personalization.json").read_text())
    assert bundle["head_sha256"] == artifacts["coreml_head"]["sha256"] and bundle["labels"] == LABELS
    assert np.allclose(np.asarray(bundle["original_head"]["weight"]), model.classifier.weight.detach().numpy())
    assert np.allclose(np.asarray(bundle["original_head"]["bias"]), model.classifier.bias.detach().numpy())
    assert bundle["update"] == {"learning_rate": 0.05, "batch_size": 4, "epochs": 3, "momentum": 0.0,
                                "shuffle": True, "seed": None}
    rollback = bundle["rollback"]
    assert rollback["max_golden_accuracy_drop"] == 0.05  # from the recipe's updatable_head
    check = rollback["golden_check"]["examples"]
    assert len(check) == 32 and [c["label"] for c in check] == [int(b) for b in
                                                                 torch.cat([b["labels"] for b in test_batches])[:32]]
    assert rollback["golden_check"]["accuracy_before"] == pytest.approx(
        np.mean(predicted[:32] == np.asarray([c["label"] for c in check])))


def test_personalize_command_replays_the_bundle_head_for_simulated_users(run: dict[str, Any], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = run["run_dir"] / "personalization"  # the default: the report lands in the run, scalars in its TensorBoard
    assert main(["personalize", "--run", str(run["run_dir"]), "--users", "6", "--feedback", "12",
                 "--later-items", "30", "--interest-classes", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["head_update"]["learning_rate"] == 0.05 and report["head_update"]["epochs"] == 3
    assert report["max_golden_accuracy_drop"] == 0.05  # the recipe's threshold, read from the bundle
    # the features path (export graph -> head weights) reproduces the model's accuracy on the golden (test) set
    assert report["golden_accuracy_before"] == pytest.approx(run["manifest"]["artifacts"]["pytorch_fp32"]["accuracy"])
    assert len(report["users"]) == 6 and report["golden_examples"] == run["manifest"]["test_examples"]
    # rejections follow the app's rule: the bundle's golden-check examples against its fp32 reference accuracy
    check = json.loads((run["export"] / "personalization.json").read_text())["rollback"]["golden_check"]
    assert report["rollback_rule"] == "bundle golden check"
    assert report["golden_check_examples"] == len(check["examples"]) == 32  # golden_check_size, not the test split
    assert report["golden_check_accuracy_before"] == check["accuracy_before"]
    for row in report["users"]:
        assert row["gain"] == pytest.approx(row["user_accuracy_after"] - row["user_accuracy_before"])
        assert len(row["interests"]) == 1
        assert row["rejected"] == (row["golden_check_accuracy_after"] < check["accuracy_before"] - 0.05)
        assert row["rejected_by_test_split"] == (row["forgetting"] > 0.05)
    assert "| gain |" in (out / "report.md").read_text() and "| gain |" in capsys.readouterr().out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run["run_dir"]))
    events.Reload()
    gain = events.Scalars("personalization/gain")[-1].value
    assert gain == pytest.approx(report["summary"]["gain"]["mean"], abs=1e-6)
    assert main(["personalize", "--run", str(run["run_dir"]), "--max-golden-drop", "3"]) == 2
    assert "--max-golden-drop must be in [0, 1], got 3.0" in capsys.readouterr().err
    assert main(["personalize", "--run", str(tmp_path)]) == 2
    assert "has no export/manifest.json" in capsys.readouterr().err


def test_benchmark_covers_every_variant(run: dict[str, Any]) -> None:
    report = json.loads((run["export"] / "benchmark.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == [*MODELS, "baseline"]
    baseline = rows["baseline"]  # TF-IDF + linear SVM on the same 424 training headlines, scored on the same test set
    assert baseline["train_examples"] == 424 and baseline["accuracy"] > 0.7 and baseline["size_mb"] > 0
    for name in MODELS[:4]:
        assert rows[name]["lead_over_baseline_points"] == pytest.approx(
            100 * (rows[name]["accuracy"] - baseline["accuracy"]))
    assert report["shipped"] == "onnx_fp32"  # the variant the budgets name
    assert "The shipped variant onnx_fp32 " in (run["export"] / "benchmark.md").read_text()
    for name in MODELS[:4]:
        row = rows[name]
        assert 0 < row["p50_ms"] <= row["p95_ms"] and row["throughput_per_s"] > 0 and row["parameters"] > 100_000
        assert row["accuracy"] == pytest.approx(run["manifest"]["artifacts"][name]["accuracy"])
    assert rows["onnx_fp32"]["agreement"] == 1.0 and rows["pytorch_fp32"]["accuracy_drop_points"] == 0.0
    assert "p50_ms" not in rows["coreml"] and rows["coreml"]["size_mb"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    events = EventAccumulator(str(run["run_dir"]))
    events.Reload()
    # the benchmark is one Markdown table in TensorBoard's TEXT tab, not ~30 one-point cards in TIME SERIES
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("export/")]
    table = make_ndarray(events.Tensors("export/benchmark/text_summary")[-1].tensor_proto).item().decode()
    assert table == (run["export"] / "benchmark.md").read_text().removeprefix("# Export benchmark\n\n").rstrip("\n")
    assert all(name in table for name in MODELS[:4])


def profile_tables(markdown: str) -> dict[int, dict[str, list[float]]]:
    """``profile.md``'s tables: length -> row title -> the numbers of its cells (ms, share, ms, share...)."""
    tables: dict[int, dict[str, list[float]]] = {}
    length = 0
    for line in markdown.splitlines():
        if line.startswith("### "):
            length = int(line.split()[1])
            tables[length] = {}
        elif length and line.startswith("| ") and not line.startswith("| kind"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            tables[length][cells[0].strip("*")] = [float(cell.rstrip("%")) for cell in cells[1:]]
    return tables


def test_profile_splits_each_call_into_layer_kinds_that_sum_to_its_time(run: dict[str, Any]) -> None:
    report = json.loads((run["export"] / "profile.json").read_text())
    assert report["lengths"] == [16, 32] and report["dropped_lengths"] == [128]  # 128 > the model's max length
    profiles = report["profiles"]
    assert [(p["variant"], p["length"]) for p in profiles] == [
        (variant, length) for length in (16, 32) for variant in ("pytorch_fp32", "onnx_int8", "onnx_fp32")]
    for profile in profiles:
        kinds = profile["kinds_ms"]
        assert list(kinds) == ["embeddings", "attention", "ffn", "pooler_classifier", "other"]
        assert sum(kinds.values()) == pytest.approx(profile["total_ms"], rel=1e-9)
        assert all(kinds[kind] > 0 for kind in ("embeddings", "attention", "ffn", "pooler_classifier")), profile
        assert profile["dominant"] == max(list(kinds)[:4], key=kinds.__getitem__)
        assert profile["unprofiled_ms"] > 0 and profile["top_ops"]
    for profile in profiles[1::3]:  # the INT8 graph ONNX Runtime runs: every node placed, none left over
        counts = profile["nodes_by_kind"]
        assert set(counts) == {"embeddings", "attention", "ffn", "pooler_classifier"} and min(counts.values()) > 0
        assert any(op["op"] in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger")
                   for op in profile["top_ops"] + profiles[4]["top_ops"])  # int8 kernels ran
    markdown = (run["export"] / "profile.md").read_text()
    tables = profile_tables(markdown)
    assert list(tables) == [16, 32]
    for length, table in tables.items():
        assert list(table) == ["embeddings", "attention", "FFN", "pooler + classifier", "other", "total"]
        for column in range(3):  # each variant: ms column sums to the total, shares to 100%
            ms = [table[row][2 * column] for row in list(table)[:5]]
            shares = [table[row][2 * column + 1] for row in list(table)[:5]]
            assert sum(ms) == pytest.approx(table["total"][2 * column], abs=0.003), (length, column)
            assert sum(shares) == pytest.approx(100.0, abs=0.3), (length, column)
            kinds = ["embeddings", "attention", "FFN", "pooler + classifier"]
            dominant = max(kinds, key=lambda row, c=column: table[row][2 * c])
            variant = ("pytorch_fp32", "onnx_int8", "onnx_fp32")[column]
            assert f"- {variant} @{length} tokens: **{dominant}**" in markdown
    assert "skipped: [128]" in markdown
    assert "per-layer profile (" in run["stdout"] and "dominant kind pytorch_fp32 @16 tokens:" in run["stdout"]


def test_onnx_nodes_are_placed_in_the_layer_kind_they_serve(run: dict[str, Any]) -> None:
    """Quantizer-added nodes (no module scope) go to the module they feed: the layer's 6 int8 matmuls are 4
    attention (Q, K, V, output) and 2 FFN ones, the n-gram projection is the embeddings', the pooler dense and
    classifier the head's; the exporter's scopes place every other node."""
    import onnx

    from export.profile import onnx_node_kinds

    int8 = onnx.load(str(run["export"] / "model.int8.onnx"))
    kinds = onnx_node_kinds(int8)
    matmuls = Counter(kinds[n.name] for n in int8.graph.node if n.op_type == "MatMulInteger")
    assert matmuls == {"attention": 4, "ffn": 2, "embeddings": 1, "pooler_classifier": 2}  # export_tiny: 1 layer
    fp32 = onnx.load(str(run["export"] / "model.onnx"))
    fp32_kinds = onnx_node_kinds(fp32)
    by_op = {n.op_type: fp32_kinds[n.name] for n in fp32.graph.node}
    assert by_op["Softmax"] == "attention" and by_op["Erf"] == "ffn"  # the scores' softmax, the FFN's GELU
    gemms = [fp32_kinds[n.name] for n in fp32.graph.node if n.op_type == "Gemm"]
    assert gemms == ["pooler_classifier", "pooler_classifier"]  # pooler dense, classifier
    layer_norms = Counter(fp32_kinds[n.name] for n in fp32.graph.node if n.op_type == "LayerNormalization")
    assert layer_norms == {"embeddings": 1, "attention": 1, "ffn": 1}
    assert "other" not in set(kinds.values())


def test_export_command_rewrites_artifacts_from_the_checkpoint(run: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = next((run["run_dir"] / "checkpoints").glob("*.ckpt"))
    config = yaml.safe_load((run["run_dir"] / "config.yaml").read_text())
    config["trainer"]["callbacks"] = [
        {"class_path": "callbacks.PyTorchExport", "init_args": {"int8": False}},
        {"class_path": "callbacks.AppAssets", "init_args": {"golden_samples": 4}},
        {"class_path": "callbacks.ExportBenchmark", "init_args": {"repeats": 2, "warmup": 0}},
    ]
    config_file = tmp_path / "export.yaml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True))
    out = tmp_path / "export"
    assert main(["export", "--ckpt", str(checkpoint), "--config", str(config_file), "--out", str(out)]) == 0
    for name in ("vocab.txt", "labels.json", "golden_tokens.json", "pytorch/model.safetensors"):
        assert sha256_of(out / name) == sha256_of(run["export"] / name), name
    rows = json.loads((out / "benchmark.json").read_text())["variants"]
    assert [r["variant"] for r in rows] == ["pytorch_fp32", "baseline"]
    assert rows[0]["accuracy"] == pytest.approx(run["manifest"]["artifacts"]["pytorch_fp32"]["accuracy"])

    # a config listing the same labels in another order: scored by name, the same figures and baseline
    config["data"]["init_args"]["labels"] = LABELS[::-1]
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["export", "--ckpt", str(checkpoint), "--config", str(config_file), "--out", str(tmp_path / "re")]) == 0
    reordered = json.loads((tmp_path / "re" / "benchmark.json").read_text())["variants"]
    assert [r["accuracy"] for r in reordered] == pytest.approx([r["accuracy"] for r in rows])
    baseline = json.loads((out / "monitoring_baseline.json").read_text())
    assert json.loads((tmp_path / "re" / "monitoring_baseline.json").read_text()) == baseline
    # other labels: one line, nothing exported
    config["data"]["init_args"]["labels"] = ["sports", "finance", "car", "world"]
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True))
    assert main(["export", "--ckpt", str(checkpoint), "--config", str(config_file), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_export_command_help_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0 and "--ckpt" in capsys.readouterr().out
    assert main(["export", "--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint not found: {tmp_path / 'missing.ckpt'}"


def coreml_logits(path: Path, batches: list[dict[str, torch.Tensor]], output: str, length: int = 32) -> list[Any]:
    import coremltools as ct

    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    results = []
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            padded_ids = np.zeros((1, length), dtype=np.int32)
            padded_mask = np.zeros((1, length), dtype=np.int32)
            padded_ids[0, :len(ids)], padded_mask[0, :len(ids)] = ids.numpy()[:length], mask.numpy()[:length]
            results.append(model.predict({"input_ids": padded_ids, "attention_mask": padded_mask})[output])
    return results


@pytest.mark.macos
def test_coreml_predictions_match_pytorch_on_macos(run: dict[str, Any],
                                                   test_batches: list[dict[str, torch.Tensor]]) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(str(run["export"] / "pytorch")).eval()
    reference = np.concatenate([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.detach()
                                .numpy() for b in test_batches])
    fp16 = np.concatenate(coreml_logits(run["export"] / "PocketBert.mlpackage", test_batches, "logits"))
    assert np.abs(fp16 - reference).max() < 0.05  # fp16 compute
    assert (fp16.argmax(-1) == reference.argmax(-1)).mean() >= 0.99
    w8 = np.concatenate(coreml_logits(run["export"] / "PocketBert8Bit.mlpackage", test_batches, "logits"))
    assert (w8.argmax(-1) == reference.argmax(-1)).mean() >= 0.9
    labels = coreml_logits(run["export"] / "PocketBertPersonalizable.mlpackage", test_batches, "label")
    assert np.mean([label == LABELS[i] for label, i in zip(labels, reference.argmax(-1), strict=True)]) >= 0.99


@pytest.mark.macos
def test_bundle_head_predicts_what_the_replay_starts_from_on_macos(run: dict[str, Any],
                                                                   test_batches: list[dict[str, torch.Tensor]]) -> None:
    """Core ML runs the head on the replay's pooled features and gives the replay's starting probabilities."""
    import coremltools as ct

    from export.evaluation import EvalSet
    from export.personalization import pooled_features, read_head_update

    head = read_head_update(load_spec(run["export"] / "PocketBertHead.mlmodel"))
    model = AutoModelForSequenceClassification.from_pretrained(str(run["export"] / "pytorch")).eval()
    features = pooled_features(model, EvalSet.from_batches(test_batches, limit=32))
    coreml_head = ct.models.MLModel(str(run["export"] / "PocketBertHead.mlmodel"))
    logits = features @ head.weight.T + head.bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    for row, probabilities in zip(features, expected, strict=True):
        out = coreml_head.predict({"features": row.astype(np.float32)})["labelProbabilities"]
        assert np.allclose([out[label] for label in LABELS], probabilities, atol=1e-4)
