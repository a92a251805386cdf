"""``python -m recipes sweep``: a 6-trial Optuna sweep on a real-data slice prunes, logs every trial for TensorBoard's
HParams view, and writes a best config that reproduces the best trial's score; bad sweeps fail in one line."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from recipes.__main__ import main
from recipes.sweep.space import SearchParam, bounds, cli_value

# 4 classes x 100 real headlines, a 1-layer 64-wide BERT, 3 epochs of 35 batches: about 10 s a trial on one core.
TINY_OVERRIDES = {
    "trainer.max_epochs": 3,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "data.init_args.labels": ["sports", "finance", "car", "game"],
    "data.init_args.limit_per_class": 100,
    "data.init_args.batch_size": 8,
    "data.init_args.max_length": 32,
    "model.init_args.architecture": {"num_layers": 1, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128,
                                     "max_position_embeddings": 64},
}
LR = "model.init_args.learning_rate"
DROPOUT = "model.init_args.dropout"


def write_sweep(tmp_path: Path, name: str = "tiny_sweep", **fields: object) -> Path:
    """A sweep YAML over news16_cpu.yaml that logs, stores and caches under ``tmp_path``."""
    spec: dict[str, object] = {
        "recipe": "news16_cpu.yaml",
        "n_trials": 6,
        "save_dir": str(tmp_path / "tb_logs"),
        "search_space": {LR: {"low": 1e-5, "high": 3e-3, "log": True}, DROPOUT: {"low": 0.0, "high": 0.2}},
        "overrides": {**TINY_OVERRIDES, "data.init_args.cache_dir": str(tmp_path / "cache")},
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"# {name}: a tiny sweep for tests\n" + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def load_study(tmp_path: Path, name: str = "tiny_sweep") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'tb_logs' / name / 'study.db'}")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny-model trials gain nothing from a second thread, and on a shared CPU two spinning threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scalars(run_dir: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [event.value for event in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def hparams_session(run_dir: Path) -> dict[str, float | str]:
    """The hyperparameters TensorBoard's HParams plugin shows for the run in ``run_dir``."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG]
    info = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {name: value.number_value if value.HasField("number_value") else value.string_value
            for name, value in info.hparams.items()}


def test_sweep_prunes_logs_trials_and_its_best_config_reproduces(
    tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # A good and a clearly bad learning rate run first (complete: the pruner needs 2); the TPE startup trials then
    # draw from a range where learning rates below ~3e-4 leave the model at chance after 2 epochs: pruned.
    config = write_sweep(tmp_path, enqueue=[{LR: 3e-3, DROPOUT: 0.1}, {LR: 1e-5, DROPOUT: 0.1}],
                         pruner={"n_startup_trials": 2, "n_warmup_steps": 1})
    assert main(["sweep", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    study = load_study(tmp_path)
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(pruned) >= 1, [(t.params, t.intermediate_values) for t in trials]
    for trial in pruned:  # stopped after epoch 1 of 3, below the median of the completed trials there
        assert sorted(trial.intermediate_values) == [0, 1]
        completed_at_1 = [t.intermediate_values[1] for t in complete if t.number < trial.number]
        assert max(trial.intermediate_values.values()) < statistics.median(completed_at_1)
    for trial in complete:  # a trial's score is its best validation epoch
        assert sorted(trial.intermediate_values) == [0, 1, 2]
        assert trial.value == pytest.approx(max(trial.intermediate_values.values()))
    assert trials[0].params == {LR: 3e-3, DROPOUT: 0.1} and trials[0].value > trials[1].value + 0.05

    study_dir = tmp_path / "tb_logs" / "tiny_sweep"
    # every trial is a TensorBoard run with its hyperparameters and score in the HParams view
    for trial in trials:
        run_dir = study_dir / f"trial_{trial.number}"
        session = hparams_session(run_dir)
        assert session[LR] == pytest.approx(trial.params[LR]) and session["trial_state"] == trial.state.name
        score = trial.value if trial.value is not None else trial.intermediate_values[max(trial.intermediate_values)]
        assert scalars(run_dir, "hp/val_macro_f1") == [pytest.approx(score)]
        assert len(scalars(run_dir, "val_macro_f1")) == len(trial.intermediate_values)
    # the summary table and Optuna's plots
    assert "study tiny_sweep: 6 trials" in out and f"best trial {study.best_trial.number}:" in out
    assert sum(line.split()[1:2] == ["PRUNED"] for line in out.splitlines()) == len(pruned)
    for plot in ("optimization_history.png", "param_importances.png"):
        image = matplotlib.image.imread(study_dir / plot)
        assert image.shape[0] > 100 and image.shape[1] > 100

    # the best trial's config reruns as a plain recipe, with the same seed, to the same score
    best_yaml = study_dir / "best.yaml"
    assert best_yaml.read_text("utf-8").startswith("# best: the best trial")
    assert main(["fit", "--config", str(best_yaml)]) == 0
    rerun = scalars(study_dir / "version_0", "val_macro_f1")
    assert len(rerun) == 3
    assert max(rerun) == pytest.approx(study.best_value, abs=1e-6)

    # rerunning the sweep continues the study: nothing is left to run, nothing is lost
    assert main(["sweep", "--config", str(config)]) == 0
    assert "6 of 6 trials finished, running 0" in capsys.readouterr().out
    assert [(t.number, t.state, t.value) for t in load_study(tmp_path).get_trials()] == \
        [(t.number, t.state, t.value) for t in trials]


@pytest.mark.parametrize(("search_space", "message"), [
    ({"model.init_args.learning_rat": {"low": 0.1, "high": 1}}, "unknown config key 'model.init_args.learning_rat'"),
    ({LR: {"low": 1e-2, "high": 1e-4}}, "low (0.01) must be below high (0.0001)"),
    ({LR: {"low": 0.0, "high": 1e-2, "log": True}}, "a log-scale range needs low > 0"),
    ({DROPOUT: {"low": 0.0}}, "needs low and high"),
    ({"trainer.accumulate_grad_batches": {"type": "categorical"}}, "needs choices"),
    ({"trainer.accumulate_grad_batches": {"choices": ["many"]}}, "accumulate_grad_batches"),
    ({"trainer.accumulate_grad_batches": {"low": 1.5, "high": 4, "type": "int"}}, "whole-number"),
    ({}, "search_space is empty"),
])
def test_bad_search_space_is_one_line_error(tmp_path: Path, search_space: dict[str, object], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = write_sweep(tmp_path, search_space=search_space)
    assert main(["sweep", "--config", str(config), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "tb_logs").exists()  # nothing created for a sweep that cannot run


@pytest.mark.parametrize(("fields", "message"), [
    ({"enqueue": [{"model.init_args.weight_decay": 0.1}]}, "is not in search_space"),
    ({"enqueue": [{LR: 1.0}]}, "outside [1e-05, 0.003]"),
    ({"overrides": {LR: 1e-3}}, "both in overrides and in search_space"),
    ({"search_space": {"model.init_args.max_length": {"low": 32, "high": 64}}}, "linked from data.init_args"),
    ({"n_trials": 0}, "n_trials must be at least 1"),
    ({"heartbeat": {"interval": 10, "grace_period": 5}}, "must exceed heartbeat.interval"),
    ({"recipe": "no_such_recipe.yaml"}, "recipe no_such_recipe.yaml not found"),
    ({"storage": "nosuchdb://x"}, "cannot open the study storage nosuchdb://x"),
])
def test_bad_sweep_settings_are_one_line_errors(tmp_path: Path, fields: dict[str, object], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = write_sweep(tmp_path, **fields)
    code = main(["sweep", "--config", str(config), *(["--dry_run"] if "storage" not in fields else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and message in err, err


@pytest.mark.parametrize(("scheme", "module", "package"), [
    ("postgresql+psycopg", "psycopg", "psycopg[binary]"),
    ("postgresql+psycopg2", "psycopg2", "psycopg2-binary"),
])
def test_missing_database_driver_names_the_package_to_install(
    tmp_path: Path, scheme: str, module: str, package: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` fails as if the driver were not installed
    config = write_sweep(tmp_path, storage=f"{scheme}://user:password@127.0.0.1:9/sweeps")
    code = main(["sweep", "--config", str(config)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"error: cannot open the study storage {scheme}://") and err.count(module) >= 2, err
    assert f"(the driver {module} is not installed: pip install '{package}')" in err, err


def test_unknown_sweep_field_is_rejected_by_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_sweep(tmp_path, n_trails=3)
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--config", str(config), "--dry_run"])
    assert info.value.code == 2 and "n_trails" in capsys.readouterr().err


def test_dry_run_prints_the_plan_with_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lr_dropout.yaml"
    config.write_text("recipe: news16_cpu.yaml\n", encoding="utf-8")
    assert main(["sweep", "--config", str(config), "--dry_run", "--n_trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "sweep lr_dropout: 3 trials of" in out and "maximize val_macro_f1" in out
    assert f"storage: sqlite:///{Path('tb_logs').resolve() / 'lr_dropout' / 'study.db'}" in out
    # learning rate (log scale) and dropout are searched when the sweep names nothing else
    assert f"{LR}: float [1e-05, 0.01] (log)" in out and f"{DROPOUT}: float [0.0, 0.3]" in out
    assert not (Path("tb_logs") / "lr_dropout").exists()


def test_values_reach_the_cli_as_the_same_yaml_values() -> None:
    for value in (1e-5, 3.0e-3, 0.1, 16, True, "bert", None, [16, 32], {"num_layers": 2}):
        assert yaml.safe_load(cli_value(value)) == value
    assert cli_value(1e-5) == "1.0e-05"  # "1e-05" would read back as a string
    corners = bounds({LR: SearchParam(low=1e-4, high=1e-2, log=True), "x": SearchParam(choices=[1, 2, 3])})
    assert corners == [{LR: 1e-4, "x": 1}, {LR: 1e-2, "x": 2}, {LR: 1e-2, "x": 3}]
    assert all(math.isfinite(c[LR]) for c in corners)


def test_diverging_trial_fails_and_the_sweep_goes_on(tmp_path: Path, one_thread: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # lr 1e3 turns the loss into NaN within a few steps: that trial is FAILED with the reason and does not count
    # toward n_trials, so a next one runs in its place
    config = write_sweep(tmp_path, n_trials=1, pruner={"kind": "none"},
                         search_space={LR: {"low": 1e-3, "high": 1e3, "log": True}},
                         enqueue=[{LR: 1e3}, {LR: 3e-3}],
                         overrides={**TINY_OVERRIDES, "trainer.max_epochs": 1,
                                    "data.init_args.cache_dir": str(tmp_path / "cache")})
    assert main(["sweep", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    failed, complete = load_study(tmp_path).get_trials()
    assert failed.state == TrialState.FAIL and "the loss became nan" in failed.user_attrs["error"]
    assert complete.state == TrialState.COMPLETE and complete.params == {LR: 3e-3} and complete.value > 0
    assert "study tiny_sweep: 2 trials (1 complete, 1 fail)" in out
    assert "importance plot: skipped, it needs 2 completed trials (1 so far)" in out
    assert (tmp_path / "tb_logs" / "tiny_sweep" / "best.yaml").is_file()


def test_sweep_whose_trials_keep_failing_stops_with_one_line(tmp_path: Path, one_thread: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = write_sweep(tmp_path, n_trials=2, max_failed_trials=2, pruner={"kind": "none"},
                         search_space={LR: {"low": 1e2, "high": 1e3, "log": True}},
                         enqueue=[{LR: 1e3}, {LR: 999.0}],  # both diverge
                         overrides={**TINY_OVERRIDES, "trainer.max_epochs": 1,
                                    "data.init_args.cache_dir": str(tmp_path / "cache")})
    assert main(["sweep", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: sweep tiny_sweep stopped after 2 failed trials with 0 of 2 finished (last failure: "
                          "the loss became nan") and err.endswith("raise max_failed_trials, then rerun to continue")
    assert [trial.state for trial in load_study(tmp_path).get_trials()] == [TrialState.FAIL] * 2


def test_metric_that_is_not_logged_stops_the_sweep(tmp_path: Path, one_thread: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = write_sweep(tmp_path, n_trials=3, metric="val_f1_macro",
                         overrides={**TINY_OVERRIDES, "trainer.max_epochs": 1,
                                    "data.init_args.cache_dir": str(tmp_path / "cache")})
    assert main(["sweep", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: metric 'val_f1_macro' is not logged") and "'val_macro_f1'" in err
    assert len(load_study(tmp_path).get_trials()) == 1  # stopped at the first trial, not once per trial
