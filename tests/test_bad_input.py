"""Every bad input gives one actionable line (`error: ...`), exit code 2, and leaves no run output behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes.__main__ import main

TINY = [
    "--model.init_args.architecture.num_layers", "1", "--model.init_args.architecture.hidden_size", "32",
    "--model.init_args.architecture.num_heads", "2", "--model.init_args.architecture.intermediate_size", "64",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


def run_fit(tmp_path: Path, *extra: str, config: str = "news16_cpu.yaml") -> int:
    return main(["fit", "--config", config, "--data.init_args.cache_dir", str(tmp_path / "cache"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "tb_logs"), *TINY, *extra])


def assert_one_line_error(capsys: pytest.CaptureFixture[str], code: int | str | None, *needles: str) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err[-1500:]
    for needle in needles:
        assert needle in last, last
    return last


def assert_no_run_output(tmp_path: Path) -> None:
    assert not list(tmp_path.glob("tb_logs/**/test_metrics.json"))
    assert not list(tmp_path.glob("tb_logs/**/*.ckpt"))


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        (b"trainer:\n  max_epochs: [1\n", ("malformed YAML", "line 3")),
        (b"trainer:\n  max_epochz: 3\n", ("unknown config key 'trainer.max_epochz'",)),
        (b"model:\n  init_args:\n    dropuot: 0.2\n", ("unknown config key 'model.init_args.dropuot'",)),
        (b"data:\n  init_args:\n    batch_size: many\n", ("wrong type for 'data.init_args.batch_size'", "int")),
    ],
    ids=["malformed-yaml", "unknown-trainer-key", "unknown-model-key", "wrong-type"],
)
def test_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: bytes,
                       needles: tuple[str, ...]) -> None:
    override = write(tmp_path, "override.yaml", yaml_text)
    code = main(["fit", "--config", "news16_cpu.yaml", "--config", str(override)])
    assert_one_line_error(capsys, code, *needles)


def test_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_modules import datamodule

    monkeypatch.delenv("NEWS_DATA_DIR")
    monkeypatch.setattr(datamodule, "DEFAULT_DATA_DIR", tmp_path / "no_shared" / "data")  # a clone without ../shared
    assert_one_line_error(capsys, run_fit(tmp_path), "NEWS_DATA_DIR", "--data.init_args.data_dir",
                          str(tmp_path / "no_shared" / "data"))
    assert_no_run_output(tmp_path)


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ("data file not found",)),
        (b"", ("data file is empty",)),
        (b"sports\t\xe4\xbd\x93 \xff\n", ("not valid UTF-8", ":1:")),
        (b"sports\t\xe4\xbd\x93 \xe8\x82\xb2\n\t\xe8\xb6\xb3\n", ("row has no label", ":2:")),
    ],
    ids=["missing-file", "empty-file", "non-utf8", "row-without-label"],
)
def test_data_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None,
                          needles: tuple[str, ...]) -> None:
    path = tmp_path / "train.tsv" if content is None else write(tmp_path, "train.tsv", content)
    code = run_fit(tmp_path, "--data.init_args.train_file", str(path))
    assert_one_line_error(capsys, code, *needles)
    assert_no_run_output(tmp_path)


def test_label_outside_whitelist_when_asked_to_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_fit(tmp_path, "--data.init_args.unknown_labels", "error")
    assert_one_line_error(capsys, code, "['essay', 'story'] are not in the label list")


def test_label_count_disagreeing_with_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_fit(tmp_path, "--model.init_args.num_labels", "18")
    assert_one_line_error(capsys, code, "num_labels is 18 but the data has 16 labels")


def test_corrupted_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = write(tmp_path, "broken.ckpt", b"PK\x03\x04 not really a checkpoint")
    code = main(["test", "--config", "news16_cpu.yaml", "--ckpt_path", str(broken)])
    assert_one_line_error(capsys, code, "cannot read checkpoint", "truncated or corrupted")


def test_unwritable_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = write(tmp_path, "not_a_dir", b"a file where the run dir should go")
    code = run_fit(tmp_path, "--trainer.logger.init_args.save_dir", str(blocker / "tb_logs"))
    assert_one_line_error(capsys, code, "cannot write run output", "save_dir")


def test_hub_model_while_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = run_fit(tmp_path, "--model.init_args.pretrained", "bert-base-chinese")
    assert_one_line_error(capsys, code, "Hugging Face Hub is unreachable", "news16_cpu.yaml")


def test_loss_becoming_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_fit(tmp_path, "--data.init_args.labels", "[sports,finance]", "--data.init_args.limit_per_class", "40",
                   "--model.init_args.learning_rate", "1e30", "--model.init_args.warmup_ratio", "0",
                   "--trainer.max_epochs", "3")
    assert_one_line_error(capsys, code, "the loss became nan", "learning_rate")
    assert not list(tmp_path.glob("tb_logs/**/test_metrics.json"))


TOUTIAO = "1_!_101_!_news_a_!_标题一_!_\n2_!_102_!_news_b_!_标题_!_二_!_\n".encode()


@pytest.mark.parametrize(
    ("content", "extra", "needles"),
    [
        (TOUTIAO, ["--data.init_args.format", "delimited"], ("format delimited needs a delimiter",)),
        (TOUTIAO, ["--data.init_args.format", "delimited", "--data.init_args.delimiter", "_!_",
                   "--data.init_args.text_field", "3", "--data.init_args.label_field", "2"],
         (":2: 6 fields where the first row has 5",)),
        (b"a,b\n", ["--data.init_args.format", "csv", "--data.init_args.has_header", "false"],
         ("text_field 'text' is a column name but the file has no header row",)),
        (b"text,label\n", ["--data.init_args.format", "csv", "--data.init_args.min_rows_per_class", "0"],
         ("min_rows_per_class must be positive or null",)),
    ],
    ids=["delimited-without-delimiter", "stray-delimiter", "column-name-without-header", "bad-min-rows"],
)
def test_reader_setting_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, extra: list[str],
                               needles: tuple[str, ...]) -> None:
    path = write(tmp_path, "corpus.txt", content)
    code = run_fit(tmp_path, "--data.init_args.train_file", str(path), "--data.init_args.labels", "null", *extra)
    assert_one_line_error(capsys, code, *needles)
    assert_no_run_output(tmp_path)
