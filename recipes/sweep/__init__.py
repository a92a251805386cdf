"""``python -m recipes sweep --config SWEEP.yaml``: an Optuna study over a training recipe's config values.

Every trial is the ``fit`` a user would run (the same CLI, the recipe plus the sweep's overrides and the trial's
values), logged to ``<save_dir>/<study>/trial_<n>`` with its hyperparameters for TensorBoard's HParams view. The
study lives in SQLite under the sweep folder (or any Optuna storage URL shared by workers on several machines), so
rerunning the command continues it; a killed trial is marked FAILED by storage heartbeats and queued again.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from lightning_modules.errors import PocketbertError
from recipes.sweep.config import SweepRecipe, check_training_config, parse, resolved_config, training_args
from recipes.sweep.report import report
from recipes.sweep.trial import TrialFailed, objective

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# pip packages of the database drivers SQLAlchemy imports for a storage URL (SQLAlchemy 2.1 reads a bare
# postgresql:// as psycopg 3, 2.0 as psycopg2; postgresql+psycopg2:// picks psycopg2 on both)
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL",
                   "MySQLdb": "mysqlclient"}


def missing_driver_hint(err: BaseException) -> str:
    """`` (pip install ...)`` when opening the storage failed because its database driver is not installed (Optuna
    re-raises SQLAlchemy's failed import as an ImportError that names no module; the cause names it)."""
    cause: BaseException | None = err
    for _ in range(8):  # a short chain; bounded in case of a cycle
        if cause is None or (isinstance(cause, ModuleNotFoundError) and cause.name):
            break
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, ModuleNotFoundError) or not cause.name:
        return ""
    module = cause.name.split(".")[0]
    return f" (the driver {module} is not installed: pip install '{DRIVER_PACKAGES.get(module, module)}')"


def shown_url(url: str) -> str:
    """The storage URL as printed: its password masked (``postgresql://user:***@host/db``), so logs hold none."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def rdb_storage(url: str, attempts: int = 6, **kwargs: Any) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried while workers started together race to create a new storage's schema."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError as err:
            # The loser of the race sees a duplicate row (IntegrityError) or, on SQLite, "table alembic_version
            # already exists"; retried, it finds the schema made.
            racing = isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in str(err)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(spec: SweepRecipe) -> optuna.Study:
    url, shown = spec.storage_url, shown_url(spec.storage_url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    beat = spec.heartbeat
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(beat.max_retry) if beat.max_retry else None
            storage = rdb_storage(url, engine_kwargs=engine_kwargs, heartbeat_interval=beat.interval,
                                  grace_period=beat.grace_period or 3 * beat.interval,
                                  heartbeat_stale_trial_callback=retry)
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as err:  # a bad URL or a missing driver
        raise PocketbertError(f"cannot open the study storage {shown}: {str(err).strip()}{missing_driver_hint(err)}; "
                              "give a URL such as sqlite:///sweeps/study.db or postgresql://user:password@host/db"
                              ) from err
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if spec.pruner.kind == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.pruner.n_startup_trials,
                                             n_warmup_steps=spec.pruner.n_warmup_steps,
                                             interval_steps=spec.pruner.interval_steps)
    try:
        study = optuna.create_study(storage=storage, study_name=spec.study_name, direction=spec.resolved_direction,
                                    pruner=pruner, load_if_exists=True)
    except ValueError as err:
        raise PocketbertError(f"study {spec.study_name} in {shown}: {err}; use a new study_name") from err
    if study.direction.name.lower() != spec.resolved_direction:
        raise PocketbertError(f"study {spec.study_name} in {shown} was created to {study.direction.name.lower()} "
                              f"its metric, this sweep asks to {spec.resolved_direction}; use a new study_name")
    # A resumed study must not replay the random startup trials it already ran.
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials),
                                               n_startup_trials=spec.n_startup_trials)
    for values in spec.enqueue:
        study.enqueue_trial(values, skip_if_exists=True)
    return study


def run(spec: SweepRecipe) -> int:
    study = open_study(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # trials of a killed worker, once their heartbeat is overdue
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    todo = max(0, spec.n_trials - finished)
    print(f"[sweep {spec.study_name}] storage {shown_url(spec.storage_url)}: {finished} of {spec.n_trials} trials "
          f"finished, running {todo}", flush=True)
    started = time.perf_counter()
    failures = FailureLimit(spec.max_failed_trials or max(3, spec.n_trials))
    if todo:
        try:
            # no n_trials here: it would count failed trials too. The study stops when it has n_trials finished
            # trials (any worker's) or when this run has seen too many failures.
            study.optimize(lambda trial: objective(spec, trial), catch=(TrialFailed,),
                           callbacks=[optuna.study.MaxTrialsCallback(spec.n_trials, states=FINISHED), failures])
        except KeyboardInterrupt:
            print(f"\ninterrupted: the running trial is marked FAILED; rerun the same command to continue "
                  f"{spec.study_name}", flush=True)
            return 130
    report(study, spec.study_dir, metric=spec.metric,
           best_config=lambda values: resolved_config(training_args(spec, values, version=None, test_after_fit=True)),
           elapsed=time.perf_counter() - started)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    if finished < spec.n_trials:
        raise PocketbertError(f"sweep {spec.study_name} stopped after {failures.failed} failed trials with {finished} "
                              f"of {spec.n_trials} finished (last failure: {failures.last_error}); fix the search "
                              "space or the recipe, or raise max_failed_trials, then rerun to continue")
    return 0


class FailureLimit:
    """Stops ``study.optimize`` once this worker has run ``limit`` failed trials (a search space where most values
    diverge would otherwise replace failures for ever)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failed = 0
        self.last_error = ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            return
        self.failed += 1
        self.last_error = str(trial.user_attrs.get("error", "see the trial's log"))
        if self.failed >= self.limit:
            study.stop()


def main(argv: list[str]) -> int:
    spec, dry_run = parse(argv)
    if dry_run:
        check_training_config(spec)
        print(f"sweep {spec.study_name}: {spec.n_trials} trials of {spec.recipe}, {spec.resolved_direction} "
              f"{spec.metric}\nstorage: {shown_url(spec.storage_url)}\nruns: {spec.study_dir}/trial_<n>\nsearch space:")
        for key, param in spec.search_space.items():
            where = f"one of {param.choices}" if param.kind == "categorical" else f"[{param.low}, {param.high}]"
            print(f"  {key}: {param.kind} {where}{' (log)' if param.log else ''}")
        print("training config: parses at every end of the search space", flush=True)
        return 0
    check_training_config(spec)
    return run(spec)
