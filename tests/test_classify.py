"""Using a trained run: classify new text with the shipped bundle, predict through the CLI, the exact splits.

All on the export_tiny run (tests/conftest.py ``export_run``: a tiny BERT on a real 4-class NLPCC slice, every
artifact exported), so the figures are checked against what the export recorded.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_modules.corpus import normalize_text, read_raw
from recipes.__main__ import main
from tests.test_bad_input import assert_one_line_error

LABELS = ["sports", "finance", "car", "game"]


@pytest.fixture(scope="module")
def splits(export_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's own train/val/test splits, written by `python -m recipes data` from its config.yaml."""
    out = tmp_path_factory.mktemp("splits")
    assert main(["data", "--config", str(export_run["run_dir"] / "config.yaml"), "--out", str(out)]) == 0
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_data_tool_writes_the_split_the_run_was_tested_on(export_run: dict[str, Any], splits: Path) -> None:
    manifest = export_run["manifest"]
    rows = read_raw(splits / "test.tsv", "tsv")
    assert len(rows) == manifest["test_examples"]
    assert {e.label for e in rows} == set(LABELS)
    assert (splits / "labels.txt").read_text("utf-8").split() == LABELS  # the model's id order
    originals = read_raw(splits / "test.tsv", "tsv", text_field="original")
    # `text` is what the model read, `original` the corpus line (NLPCC: characters separated by spaces)
    assert all(normalize_text(o.text, char_separated=True) == e.text for o, e in zip(originals, rows, strict=True))
    assert any(o.text != e.text for o, e in zip(originals, rows, strict=True))
    assert sum(len(read_raw(splits / f"{s}.tsv", "tsv")) for s in ("train", "val", "test")) == 4 * 150


@pytest.mark.parametrize("variant", ["onnx_int8", "pytorch_int8"])
def test_classify_reproduces_the_manifest_accuracy_and_agreement(
        export_run: dict[str, Any], splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        variant: str) -> None:
    outputs = {}
    for name in (variant, "pytorch_fp32"):
        out = tmp_path / f"{name}.csv"
        assert main(["classify", "--run", str(export_run["run_dir"]), "--input", str(splits / "test.tsv"),
                     "--variant", name, "--output", str(out)]) == 0
        outputs[name] = read_csv(out)
        printed = capsys.readouterr().out
        recorded = export_run["manifest"]["artifacts"][name]
        accuracy = np.mean([row["predicted"] == row["label"] for row in outputs[name]])
        assert accuracy == pytest.approx(recorded["accuracy"], abs=1e-4)  # the bundle run as an app runs it
        assert f"accuracy {recorded['accuracy']:.4f}   macro-F1 {recorded['macro_f1']:.4f}" in printed
        assert f"classified {len(outputs[name])} texts" in printed and "texts/s" in printed
    agreement = np.mean([a["predicted"] == b["predicted"] for a, b in zip(outputs[variant], outputs["pytorch_fp32"],
                                                                          strict=True)])
    assert agreement == pytest.approx(export_run["manifest"]["artifacts"][variant]["parity_vs_pytorch"]["agreement"],
                                      abs=1e-4)


NEW_TEXTS = ["国足 2:0 战胜对手晋级", "", "央行宣布降准0.5个百分点，股市大涨",
             "新款SUV\u2028上市，“售价”低至10万, 他说\"好\"", "中超" * 100, "   ", "英雄联盟全球总决赛今晚开战"]


def test_classify_defaults_to_the_shipped_variant_and_feeds_drift(
        export_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "new.txt"
    source.write_text("\n".join(NEW_TEXTS) + "\n", encoding="utf-8")
    run_dir = export_run["run_dir"]
    assert main(["classify", "--run", str(run_dir), "--input", str(source), "--top_k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "classify: onnx_fp32 (shipped, as benchmark.json marks it)" in printed  # export_tiny's budgets.variants
    assert "skipped 2 empty row(s): lines 2, 6" in printed
    assert "1 text(s) longer than 32 tokens were truncated (their ends were not read): line 5" in printed
    out = run_dir / "classify" / "new.onnx_fp32.csv"
    rows = read_csv(out)
    assert [row["text"] for row in rows] == [t for t in NEW_TEXTS if t.strip()]  # raw texts, quotes and U+2028 kept
    assert [int(row["index"]) for row in rows] == [0, 2, 3, 4, 6] and [row["truncated"] for row in rows].count(
        "True") == 1
    for row in rows:
        assert row["predicted"] in LABELS and row["top2"] in LABELS and row["top3"] in LABELS
        assert 1 >= float(row["confidence"]) >= float(row["top2_confidence"]) >= float(row["top3_confidence"])
    jsonl = tmp_path / "new.jsonl"
    assert main(["classify", "--run", str(run_dir), "--input", str(source), "--top_k", "4", "--output",
                 str(jsonl)]) == 0
    records = [json.loads(line) for line in jsonl.read_text("utf-8").split("\n") if line]
    assert [r["predicted"] for r in records] == [row["predicted"] for row in rows]
    assert all(sum(entry["confidence"] for entry in r["top_k"]) == pytest.approx(1, abs=1e-5) for r in records)
    capsys.readouterr()
    for predictions in (out, jsonl):  # drift reads classify's output as it is
        assert main(["drift", "--baseline", str(run_dir), "--predictions", str(predictions)]) == 0
        assert capsys.readouterr().out.startswith(f"{len(rows)} predictions vs baseline")


def test_predict_writes_the_test_split_predictions(export_run: dict[str, Any], splits: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = export_run["manifest"]["source_checkpoint"]
    common = ["--config", str(export_run["run_dir"] / "config.yaml"), "--ckpt_path", checkpoint,
              "--trainer.logger.init_args.save_dir", str(tmp_path / "tb"),
              "--data.init_args.cache_dir", str(export_run["root"] / "cache")]
    assert main(["predict", *common]) == 0
    path = export_run["run_dir"] / "predictions" / "predictions.csv"  # beside the checkpoint, in its run
    examples = export_run["manifest"]["test_examples"]
    assert f"predict: wrote {examples} predictions of the test split to {path}" in capsys.readouterr().out
    rows = read_csv(path)
    truth = read_raw(splits / "test.tsv", "tsv")
    assert [row["text"] for row in rows] == [e.text for e in truth] and [row["label"] for row in rows] == [
        e.label for e in truth]
    baseline = json.loads((export_run["export"] / "monitoring_baseline.json").read_text())
    counts = [sum(row["predicted"] == label for row in rows) for label in LABELS]
    assert counts == baseline["predicted_counts"]  # the checkpoint's predictions are the bundle's fp32 ones
    for row in rows:
        probabilities = [float(row[f"p_{label}"]) for label in LABELS]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4) and max(probabilities) == float(row["confidence"])
        assert LABELS[int(np.argmax(probabilities))] == row["predicted"]

    new = tmp_path / "new.txt"
    new.write_text("国足战胜对手晋级\n\n央行宣布降准，股市大涨\n", encoding="utf-8")
    assert main(["predict", *common, "--data.init_args.predict_file", str(new)]) == 0
    path = export_run["run_dir"] / "predictions" / "new.csv"
    assert not (tmp_path / "tb").exists()  # no TensorBoard run of its own
    assert f"predict: wrote 2 predictions of the predict split to {path}" in capsys.readouterr().out
    assert [(row["text"], row["label"]) for row in read_csv(path)] == [("国足战胜对手晋级", ""),
                                                                       ("央行宣布降准,股市大涨", "")]  # NFKC
    code = main(["predict", *common, "--data.init_args.predict_file", str(tmp_path / "nosuch.txt")])
    assert_one_line_error(capsys, code, f"predict_file not found: {tmp_path / 'nosuch.txt'}; check the path")


@pytest.mark.parametrize(("shipped", "expected"), [
    ("coreml_w8", "classify: onnx_int8 (the shipped variant coreml_w8 cannot run here (Core ML predicts on macOS"),
    (None, "classify: onnx_int8 (the default: no benchmark.json)"),
])
def test_classify_falls_back_when_the_shipped_variant_cannot_run(
        export_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], shipped: str | None,
        expected: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(export_run["export"], bundle)
    if shipped is None:
        (bundle / "benchmark.json").unlink()
    else:
        report = json.loads((bundle / "benchmark.json").read_text())
        (bundle / "benchmark.json").write_text(json.dumps({**report, "shipped": shipped}))
    source = write(tmp_path, "one.txt", "国足晋级\n".encode())
    assert main(["classify", "--run", str(bundle), "--input", str(source), "--output", str(tmp_path / "o.csv")]) == 0
    assert expected in capsys.readouterr().out


@pytest.fixture
def tampered_bundle(export_run: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the export folder whose manifest no longer lists onnx_int8 and whose vocab.txt was edited."""
    bundle = tmp_path / "bundle"
    shutil.copytree(export_run["export"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["artifacts"]["onnx_int8"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "vocab.txt").write_text((bundle / "vocab.txt").read_text("utf-8").replace("[UNK]", "[UNKNOWN]"),
                                      encoding="utf-8")
    return bundle


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("case", "needles"), [
    ("no-export", ("has no export/manifest.json",)),
    ("variant-not-exported", ("variant onnx_int8 is not runnable from", "pytorch_fp32")),
    ("changed-vocab", ("vocab.txt (vocab) changed since export",)),
    ("bad-variant-name", ("argument --variant: invalid choice: 'coreml'",)),
    ("missing-input", ("input file not found:",)),
    ("empty-input", ("input file is empty:",)),
    ("non-utf8-input", ("not valid UTF-8",)),
    ("unsupported-input", ("has an unsupported type .docx",)),
    ("no-text-column", ("header has no column 'text'", "--text_column")),
    ("top-k-too-large", ("--top_k 9 exceeds the model's 4 labels",)),
    ("top-k-zero", ("--top_k, --batch_size and --threads must be positive",)),
    ("bad-output-type", ("must end in .csv or .jsonl",)),
])
def test_classify_bad_input_is_one_line(export_run: dict[str, Any], tampered_bundle: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], case: str,
                                        needles: tuple[str, ...]) -> None:
    good = write(tmp_path, "ok.txt", "国足晋级\n".encode())
    run, source, extra = str(export_run["run_dir"]), good, []
    if case == "no-export":
        run = str(tmp_path)
    elif case == "variant-not-exported":
        run, extra = str(tampered_bundle), ["--variant", "onnx_int8"]
    elif case == "changed-vocab":
        run, extra = str(tampered_bundle), ["--variant", "pytorch_fp32"]
    elif case == "bad-variant-name":
        extra = ["--variant", "coreml"]
    elif case == "missing-input":
        source = tmp_path / "nosuch.txt"
    elif case == "empty-input":
        source = write(tmp_path, "empty.txt", b"\n  \n")
    elif case == "non-utf8-input":
        source = write(tmp_path, "latin1.txt", "café\n".encode("latin-1"))
    elif case == "unsupported-input":
        source = write(tmp_path, "texts.docx", b"PK")
    elif case == "no-text-column":
        source = write(tmp_path, "texts.csv", "title\n国足晋级\n".encode())
    elif case == "top-k-too-large":
        extra = ["--top_k", "9"]
    elif case == "top-k-zero":
        extra = ["--top_k", "0"]
    elif case == "bad-output-type":
        extra = ["--output", str(tmp_path / "out.xlsx")]
    code = main(["classify", "--run", run, "--input", str(source), *extra])
    assert_one_line_error(capsys, code, *needles)


def test_data_tool_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(capsys, main(["data", "--config", str(tmp_path / "nosuch.yaml")]), "config",
                          "not found")
    assert_one_line_error(capsys, main(["data"]), "the following arguments are required: --config")
    config = write(tmp_path, "raw.yaml", b"data:\n  class_path: lightning_modules.NewsDataModule\n  init_args:\n"
                                         b"    train_file: raw.txt\n    format: delimited\n")
    assert_one_line_error(capsys, main(["data", "--config", str(config)]), "format delimited needs a delimiter")
