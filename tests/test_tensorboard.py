"""TensorBoard as users see it: one run per training run (``latest`` is no second one), an HParams row that compares
runs, no runs from validate/test/predict, and ``latest`` pointed as soon as the best checkpoint exists."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonargparse import dict_to_namespace
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata as hparams_metadata

from lightning_modules.errors import PocketbertError
from lightning_modules.runs import point_latest, resolve_run_path
from recipes.__main__ import main
from recipes.run_columns import VOCABULARY, run_columns
from tests.conftest import REPO

# 4 real classes x 50 headlines, a 1-layer 64-wide BERT, 2 epochs: a few seconds of training on one core.
TINY = ["--data.init_args.labels", "[sports,finance,car,game]", "--data.init_args.limit_per_class", "50",
        "--data.init_args.batch_size", "16", "--data.init_args.max_length", "32", "--trainer.max_epochs", "2",
        "--model.init_args.architecture.num_layers", "1", "--model.init_args.architecture.hidden_size", "64",
        "--model.init_args.architecture.num_heads", "2", "--model.init_args.architecture.intermediate_size", "128",
        "--model.init_args.architecture.ngram_buckets", "1000",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TEACHER_COLUMNS = {"model", "encoder", "num_layers", "hidden_size", "num_heads", "intermediate_size", "pooling",
                   "ngram_orders", "ngram_buckets", "ngram_dropout", "ngram_bag", "learning_rate", "dropout",
                   "weight_decay", "warmup_ratio", "batch_size", "max_length", "limit_per_class", "max_epochs",
                   "accumulate_grad_batches", "precision", "seed"}


def fit(root: Path, *extra: str) -> int:
    return main(["fit", "--config", "news16_cpu.yaml", *TINY, "--data.init_args.cache_dir", str(root / "cache"),
                 "--trainer.logger.init_args.save_dir", str(root / "tb_logs"), *extra])


def scanned_runs(logdir: Path) -> dict[str, Path]:
    """The runs TensorBoard finds under ``logdir`` (its own directory scan, which follows links), with the folder
    each one resolves to."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    return {run: (logdir / run).resolve() for run in multiplexer.Runs()}


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in accumulator.Scalars(tag)] if tag in accumulator.Tags()["scalars"] else []


def hparams_plugin(accumulator: EventAccumulator) -> tuple[Any, Any]:
    """The experiment (the table's columns and metrics) and the session start (this run's row) the run logged."""
    content = accumulator.PluginTagToContent("hparams")
    return (hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG]),
            hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG]))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fit (tested after fit), then predict, test and validate on ``latest/best.ckpt``: the paths users type."""
    root = tmp_path_factory.mktemp("tb")
    assert fit(root) == 0
    best = str(root / "tb_logs" / "news16_cpu" / "latest" / "best.ckpt")
    common = ["--config", "news16_cpu.yaml", *TINY, "--data.init_args.cache_dir", str(root / "cache"),
              "--trainer.logger.init_args.save_dir", str(root / "tb_logs"), "--ckpt_path", best]
    for subcommand in ("predict", "test", "validate"):
        assert main([subcommand, *common]) == 0, subcommand
    return root


def test_one_tensorboard_run_per_training_run(teacher_run: Path) -> None:
    logdir = teacher_run / "tb_logs"
    runs = scanned_runs(logdir)
    assert list(runs) == ["news16_cpu/version_0"]  # no `latest` twin, no empty version_1 from predict/test/validate
    assert len(set(runs.values())) == len(runs)
    assert sorted(p.name for p in (logdir / "news16_cpu").iterdir()) == ["latest", "version_0"]
    assert (logdir / "news16_cpu" / "latest").read_text() == "version_0\n"
    run_dir = logdir / "news16_cpu" / "version_0"
    # predict wrote beside its checkpoint; the run's config.yaml is still the fit's (it reruns the run)
    rows = (run_dir / "predictions" / "predictions.csv").read_text("utf-8").splitlines()
    assert len(rows) == 1 + 4 * 50 - 4 * 35 - 4 * 7  # header + the test split: 15% of 4 x 50 headlines
    config = yaml.safe_load((run_dir / "config.yaml").read_text("utf-8"))
    assert config["ckpt_path"] is None and config["trainer"]["max_epochs"] == 2


def test_hparams_row_has_the_tuned_columns_and_the_best_validation_score(teacher_run: Path) -> None:
    run_dir = teacher_run / "tb_logs" / "news16_cpu" / "version_0"
    accumulator = events(run_dir)
    experiment, session = hparams_plugin(accumulator)
    assert [info.name.tag for info in experiment.metric_infos] == ["hp_metric", "test_acc", "test_macro_f1"]
    assert [info.name for info in experiment.hparam_infos] == list(VOCABULARY)
    row = {name: value.number_value if value.HasField("number_value") else
           value.bool_value if value.HasField("bool_value") else value.string_value
           for name, value in session.hparams.items()}
    assert set(row) == TEACHER_COLUMNS  # no _instantiator, label_names, alpha or MobileBERT sizes
    assert row["model"] == "TextClassifier" and row["encoder"] == "bert" and row["pooling"] == "mean"
    assert (row["num_layers"], row["hidden_size"], row["ngram_buckets"], row["max_epochs"]) == (1, 64, 1000, 2)
    assert row["learning_rate"] == pytest.approx(1e-3) and row["ngram_orders"] == "2" and row["ngram_bag"] is True
    assert yaml.safe_load((run_dir / "hparams.yaml").read_text())["learning_rate"] == pytest.approx(1e-3)
    val_f1 = scalars(accumulator, "val_macro_f1")
    hp_metric = scalars(accumulator, "hp_metric")
    assert len(val_f1) == 2 and hp_metric == [pytest.approx(max(val_f1[:i + 1])) for i in range(2)]  # never -1
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert scalars(accumulator, "test_acc") == [pytest.approx(metrics["test_acc"])]  # predict/test/validate: none
    assert scalars(accumulator, "test_macro_f1") == [pytest.approx(metrics["test_macro_f1"])]
    assert f"f1{max(val_f1):.4f}" in Path(metrics["best_checkpoint"]).name  # hp_metric is the best checkpoint's


def test_student_and_mobilebert_columns_are_the_ones_that_apply(tmp_path: Path) -> None:
    recipe = yaml.safe_load((REPO / "recipes" / "configs" / "news16_distill_cpu.yaml").read_text())
    pretrain_runs = tmp_path / "tb_logs" / "news16_pretrain_cpu"
    (pretrain_runs / "version_4" / "pretrained").mkdir(parents=True)
    point_latest(pretrain_runs / "version_4")
    os.chdir(tmp_path)  # the recipe names tb_logs/news16_pretrain_cpu/latest/pretrained, relative to where it runs
    try:
        student = run_columns(dict_to_namespace(recipe))
    finally:
        os.chdir(REPO)
    assert student == {"model": "DistillationModule", "pretrained": "tb_logs/news16_pretrain_cpu/version_4/pretrained",
                       "learning_rate": 2e-3, "dropout": 0.1, "weight_decay": 0.01, "warmup_ratio": 0.06,
                       "alpha": 0.2, "temperature": 1.0, "batch_size": 64, "max_length": 128, "max_epochs": 10,
                       "precision": "32-true", "seed": 42, "prune_vocab": True,
                       "teacher": "TfidfTeacher(folds=5) + NaiveBayesTeacher(folds=5) + "
                                  "TfidfTeacher(folds=5, nb_scaled=True)"}
    recipe["model"]["init_args"].pop("pretrained")
    recipe["model"]["init_args"]["preset"] = "mobilebert"
    recipe["model"]["init_args"]["teacher_checkpoint"] = "tb_logs/news16_cpu/latest/best.ckpt"
    mobilebert = run_columns(dict_to_namespace(recipe))
    assert mobilebert["encoder"] == "mobilebert (embedding 128, bottleneck 128), preset mobilebert"
    assert (mobilebert["num_layers"], mobilebert["hidden_size"]) == (24, 512)
    assert not {"pooling", "ngram_orders", "ngram_buckets", "embedding_size"} & set(mobilebert)
    assert mobilebert["teacher"] == (  # no pointer there
        "tb_logs/news16_cpu/latest/best.ckpt + TfidfTeacher(folds=5) + NaiveBayesTeacher(folds=5) + "
        "TfidfTeacher(folds=5, nb_scaled=True)")
    assert set(student) | set(mobilebert) <= set(VOCABULARY)


def test_latest_names_the_run_once_it_has_a_best_checkpoint(tmp_path: Path) -> None:
    # an earlier run, then one that skips the test after fit: `latest` must name the second by the time fit returns
    assert fit(tmp_path, "--trainer.max_epochs", "1") == 0
    runs = tmp_path / "tb_logs" / "news16_cpu"
    assert fit(tmp_path, "--trainer.max_epochs", "1", "--test_after_fit", "false") == 0
    assert (runs / "latest").read_text() == "version_1\n"
    best = resolve_run_path(runs / "latest" / "best.ckpt")
    assert best == runs / "version_1" / "best.ckpt"
    assert best.resolve().parent == (runs / "version_1" / "checkpoints").resolve()
    assert not (runs / "version_1" / "test_metrics.json").exists()
    # a run whose fit-end step fails (an export, say) still becomes `latest`: its best checkpoint exists
    code = fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.callbacks+=tests.helpers.FailAtFitEnd")
    assert code == 2
    assert (runs / "latest").read_text() == "version_2\n"
    assert resolve_run_path(runs / "latest" / "best.ckpt").resolve().is_file()
    assert sorted(scanned_runs(tmp_path / "tb_logs")) == [f"news16_cpu/version_{i}" for i in range(3)]


def test_latest_replaces_the_old_link_tensorboard_scanned_twice(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    runs = tmp_path / "tb_logs" / "news16_cpu"
    for version in ("version_0", "version_1"):
        with SummaryWriter(str(runs / version)) as writer:
            writer.add_scalar("val_macro_f1", 0.5, 1)
    (runs / "latest").symlink_to("version_0")  # what older versions left: TensorBoard's scan follows it
    assert sorted(scanned_runs(tmp_path / "tb_logs")) == ["news16_cpu/latest", "news16_cpu/version_0",
                                                          "news16_cpu/version_1"]
    point_latest(runs / "version_1")
    assert not (runs / "latest").is_symlink() and (runs / "latest").read_text() == "version_1\n"
    assert sorted(scanned_runs(tmp_path / "tb_logs")) == ["news16_cpu/version_0", "news16_cpu/version_1"]
    assert resolve_run_path(runs / "latest" / "best.ckpt") == runs / "version_1" / "best.ckpt"
    assert resolve_run_path(runs / "version_0" / "latest.txt") == runs / "version_0" / "latest.txt"
    (runs / "latest").write_text("../../elsewhere\n")
    with pytest.raises(PocketbertError, match=r"latest should hold the name of a run folder \(e\.g\. version_3\), "
                                              r"found '\.\./\.\./elsewhere'; delete it and rerun fit"):
        resolve_run_path(runs / "latest" / "best.ckpt")
