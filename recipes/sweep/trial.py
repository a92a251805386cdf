"""One trial = one ``fit`` through the recipes CLI, with Optuna's pruning callback and a score recorder added."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import optuna
from lightning.pytorch.loggers import TensorBoardLogger
from optuna_integration import PyTorchLightningPruningCallback
from typing_extensions import override

from callbacks import HParamsTable
from lightning_modules.errors import PocketbertError
from recipes.cli import PocketbertCLI
from recipes.sweep.config import SweepRecipe, training_args
from recipes.sweep.space import suggest


class MetricNotLogged(PocketbertError):
    """The sweep's metric never shows up in the trial's logged metrics: a config error, not a bad trial."""


class TrialFailed(Exception):
    """Training itself failed with these values (e.g. the loss diverged): the trial is FAILED, the sweep goes on."""


class TrialRecorder(L.Callback):
    """Keeps the metric of every validation epoch (the trial's score is the best of them)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.values: list[float] = []
        self.trainer: L.Trainer | None = None
        self.training_started = False

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training_started = True

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logged = sorted(name for name in trainer.callback_metrics if "/" not in name)
            raise MetricNotLogged(f"metric {self.metric!r} is not logged by this recipe; set metric to one of "
                                  f"{logged}")
        self.values.append(float(value))


class TrialCLI(PocketbertCLI):
    """The recipes CLI a user runs, plus callbacks added to the built Trainer (so they stay out of the saved
    config: the trial's ``config.yaml`` reruns without Optuna)."""

    def __init__(self, args: list[str], extra_callbacks: list[L.Callback]) -> None:
        self.extra_callbacks = extra_callbacks
        super().__init__(args=args)

    @override
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        callbacks: list[L.Callback] = getattr(trainer, "callbacks", [])  # set by Lightning's connector
        callbacks.extend(self.extra_callbacks)
        for table in hparams_tables(trainer):
            table.defer = True  # the trial's row is written when it ends, with its state (log_trial_hparams)
        return trainer


def hparams_tables(trainer: L.Trainer) -> list[HParamsTable]:
    return [callback for callback in getattr(trainer, "callbacks", []) if isinstance(callback, HParamsTable)]


def best_of(values: list[float], direction: str) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    return max(finite) if direction == "maximize" else min(finite)


def objective(spec: SweepRecipe, trial: optuna.Trial) -> float:
    values = suggest(trial, spec.search_space)
    version = f"trial_{trial.number}"
    trial.set_user_attr("run_dir", str(spec.study_dir / version))
    print(f"\n[sweep {spec.study_name}] trial {trial.number}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float)
          else f"{k}={v}" for k, v in values.items()), flush=True)
    recorder = TrialRecorder(spec.metric)
    callbacks: list[L.Callback] = [recorder]
    if spec.pruner.kind != "none":
        # optuna-integration 5's callback subclasses `lightning.pytorch`'s Callback, the Trainer this project uses
        # (a `pytorch_lightning` one would be a different class: its hooks would never be called).
        callbacks.append(PyTorchLightningPruningCallback(trial, monitor=spec.metric))
    args = training_args(spec, values, version=version, test_after_fit=False)
    try:
        TrialCLI(args, callbacks)
    except optuna.TrialPruned:
        log_trial_hparams(recorder, values, spec.metric, best_of(recorder.values, spec.resolved_direction), "PRUNED")
        raise
    except SystemExit as exit_:
        if recorder.trainer is not None and recorder.trainer.interrupted:
            # Lightning turns Ctrl-C into SystemExit(1); on KeyboardInterrupt Optuna marks the trial FAILED
            raise KeyboardInterrupt from exit_
        raise
    except MetricNotLogged:
        raise
    except PocketbertError as err:
        if not recorder.training_started:
            raise  # the config or the data is wrong: every trial would fail the same way
        trial.set_user_attr("error", str(err))
        raise TrialFailed(str(err)) from err
    score = best_of(recorder.values, spec.resolved_direction)
    if math.isnan(score):
        raise TrialFailed(f"no finite {spec.metric} was logged (did training run at least one validation epoch?)")
    log_trial_hparams(recorder, values, spec.metric, score, "COMPLETE")
    return score


def log_trial_hparams(recorder: TrialRecorder, values: dict[str, Any], metric: str, score: float, state: str) -> None:
    """The trial's row in TensorBoard's HParams tab (one session per trial): the run's columns, the searched values
    under their config keys, the trial's state, and its score as ``hp/<metric>``."""
    trainer = recorder.trainer
    if trainer is None or not isinstance(trainer.logger, TensorBoardLogger) or math.isnan(score):
        return
    trainer.logger.log_metrics({f"hp/{metric}": score}, step=trainer.global_step)
    for table in hparams_tables(trainer):
        table.write_session(trainer, extra_columns={**values, "trial_state": state}, extra_metrics=[f"hp/{metric}"])
    trainer.logger.experiment.flush()
