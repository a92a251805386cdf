"""A sweep recipe: its YAML schema (typed dataclasses, so ``--help`` documents every field), its checks, and the
``fit`` arguments and resolved config of a trial."""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from lightning_modules.errors import PocketbertError
from recipes.cli import PocketbertCLI, recipe_path, resolve_config_names
from recipes.config_errors import concise_config_error
from recipes.sweep.space import (
    SearchParam,
    bounds,
    check_fixed_values,
    check_search_space,
    default_search_space,
    override_args,
)

# The CLI links these model arguments from the DataModule (recipes/cli.py); setting them directly would be ignored.
LINKED = {
    "model.init_args.max_length": "data.init_args.max_length",
    "model.init_args.tokenizer": "data.init_args.tokenizer",
    "model.init_args.label_names": "data.init_args.labels",
}


@dataclass
class Pruning:
    """When to stop an unpromising trial early: Optuna's MedianPruner, fed every validation epoch by
    optuna-integration's Lightning pruning callback.

    Args:
        kind: ``median`` stops a trial whose metric at an epoch is worse than the median of the completed trials at
            the same epoch; ``none`` lets every trial run to the end.
        n_startup_trials: Completed trials needed before any trial is pruned.
        n_warmup_steps: Validation epochs every trial runs before it may be pruned (0: after its first epoch).
        interval_steps: Check every this many epochs.
    """

    kind: Literal["median", "none"] = "median"
    n_startup_trials: int = 3
    n_warmup_steps: int = 1
    interval_steps: int = 1


@dataclass
class Heartbeat:
    """How a killed or crashed trial is found and retried (heartbeats in the study's storage).

    Args:
        interval: Seconds between a running trial's heartbeats.
        grace_period: Seconds without a heartbeat after which a RUNNING trial is marked FAILED by the next worker
            that starts a trial (default: 3 x ``interval``).
        max_retry: How many times a killed trial's values are queued again (0: never).
    """

    interval: int = 10
    grace_period: int | None = None
    max_retry: int = 1


@dataclass
class SweepRecipe:
    """An Optuna sweep over a training recipe.

    Args:
        recipe: The training recipe every trial runs: a name in recipes/configs/ (``news16_cpu.yaml``) or a path,
            relative to the sweep YAML's folder or the working directory.
        study_name: Name of the study and of its folder ``<save_dir>/<study_name>``; defaults to the sweep YAML's
            file name.
        n_trials: Finished (completed or pruned) trials the study should reach; a rerun runs only the rest. A failed
            trial (e.g. a diverging loss) does not count: another trial replaces it.
        max_failed_trials: How many failed trials one run of the sweep accepts before it stops with an error
            (instead of replacing them for ever); default: ``n_trials``, at least 3.
        metric: Logged metric each trial is judged by (its best value over the validation epochs).
        direction: ``maximize`` or ``minimize`` the metric; default: minimize metrics named ``*loss*``, else
            maximize.
        search_space: Dotted config keys of the training recipe and how to sample each; default: the learning
            rate on a log scale and dropout.
        overrides: Dotted config keys set in every trial, e.g. a cheaper budget (``trainer.max_epochs: 3``).
        enqueue: Values to try first, one mapping of search-space keys a trial (e.g. the recipe's own); each is
            queued once per study.
        seed: Seed of the TPE sampler (a resumed study continues from ``seed`` + its trial count). The training
            seed is the recipe's ``seed_everything``, the same in every trial.
        n_startup_trials: Trials sampled at random before TPE models the results.
        storage: Optuna storage URL; default ``sqlite:///<save_dir>/<study_name>/study.db``. Give the same
            ``postgresql://...`` URL to workers on several machines.
        save_dir: Folder of the sweep's runs: ``<save_dir>/<study_name>/trial_<n>``, the best config and plots.
        pruner: Early stopping of unpromising trials.
        heartbeat: Detection and retry of killed trials.
    """

    recipe: str
    study_name: str | None = None
    n_trials: int = 20
    max_failed_trials: int | None = None
    metric: str = "val_macro_f1"
    direction: Literal["maximize", "minimize"] | None = None
    search_space: dict[str, SearchParam] = field(default_factory=default_search_space)
    overrides: dict[str, Any] = field(default_factory=dict)
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 42
    n_startup_trials: int = 5
    storage: str | None = None
    save_dir: Path = Path("tb_logs")
    pruner: Pruning = field(default_factory=Pruning)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)

    @property
    def resolved_direction(self) -> Literal["maximize", "minimize"]:
        return self.direction or ("minimize" if "loss" in self.metric else "maximize")

    @property
    def study_dir(self) -> Path:
        return self.save_dir.resolve() / str(self.study_name)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.study_dir / 'study.db'}"


# ---- the command line -----------------------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m recipes sweep",
        description="Optuna sweep over a training recipe: every trial is the recipe's `fit` with values sampled from "
                    "the search space, logged to <save_dir>/<study_name>/trial_<n>; rerun to continue the study. "
                    "See docs/sweeps.md.")
    parser.add_argument("--config", action=ActionConfigFile,
                        help="A sweep recipe (YAML), e.g. news16_sweep_cpu.yaml (a bare name resolves in "
                             "recipes/configs/).")
    parser.add_class_arguments(SweepRecipe, fail_untyped=True, sub_configs=True)
    parser.add_argument("--dry_run", action=ActionYesNo, default=False,
                        help="Check the sweep and the training config at every end of the search space, print the "
                             "plan and exit without training.")
    return parser


def parse(argv: list[str]) -> tuple[SweepRecipe, bool]:
    parser = build_parser()
    config = parser.parse_args(resolve_config_names(argv))
    sweep_files = [Path(str(path)) for path in (config.get("config") or [])]
    dry_run = bool(config.get("dry_run"))
    # The fields sit at the top level of the parsed namespace; nested dataclasses come back built.
    built = parser.instantiate(config)
    spec = SweepRecipe(**{f.name: built[f.name] for f in fields(SweepRecipe)})
    spec.recipe = resolve_recipe(spec.recipe, sweep_files[-1].parent if sweep_files else None)
    if spec.study_name is None:
        spec.study_name = sweep_files[-1].stem if sweep_files else f"{Path(spec.recipe).stem}_sweep"
    check_recipe(spec)
    return spec, dry_run


def resolve_recipe(value: str, sweep_dir: Path | None) -> str:
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return str(path.resolve())
    if sweep_dir is not None and (sweep_dir / path).is_file():
        return str((sweep_dir / path).resolve())
    found = recipe_path(value)
    if not Path(found).is_file():
        raise PocketbertError(f"recipe {value} not found (looked in {sweep_dir or '.'}, the working directory and "
                              "recipes/configs/); name a training recipe such as news16_cpu.yaml")
    return found


def check_recipe(spec: SweepRecipe) -> None:
    """Everything that can be checked without parsing the training config: one line saying what to fix."""
    if spec.n_trials < 1:
        raise PocketbertError(f"n_trials must be at least 1, got {spec.n_trials}")
    if spec.max_failed_trials is not None and spec.max_failed_trials < 1:
        raise PocketbertError(f"max_failed_trials must be at least 1 or null, got {spec.max_failed_trials}")
    name = str(spec.study_name)
    if not name or "/" in name or name.startswith("."):
        raise PocketbertError(f"study_name {name!r} must be a plain folder name (no '/', not starting with '.')")
    if not spec.metric:
        raise PocketbertError("metric is empty: name a logged metric such as val_macro_f1 or val_loss")
    check_search_space(spec.search_space)
    for key in [*spec.overrides, *spec.search_space]:
        if key in LINKED:
            raise PocketbertError(f"{key} is linked from {LINKED[key]} (the DataModule owns it); set that key instead")
        if key in spec.overrides and key in spec.search_space:
            raise PocketbertError(f"{key} is both in overrides and in search_space; keep it in one of them")
    for i, values in enumerate(spec.enqueue):
        check_fixed_values(spec.search_space, values, f"enqueue[{i}]")
    beat = spec.heartbeat
    if beat.interval < 1:
        raise PocketbertError(f"heartbeat.interval must be at least 1 second, got {beat.interval}")
    if beat.grace_period is not None and beat.grace_period <= beat.interval:
        raise PocketbertError(f"heartbeat.grace_period ({beat.grace_period}) must exceed heartbeat.interval "
                              f"({beat.interval}), or a live trial would be marked FAILED")
    if beat.max_retry < 0 or spec.n_startup_trials < 0 or spec.pruner.n_startup_trials < 0:
        raise PocketbertError("heartbeat.max_retry, n_startup_trials and pruner.n_startup_trials must be >= 0")


def training_args(spec: SweepRecipe, values: dict[str, Any], *, version: str | None, test_after_fit: bool) -> list[str]:
    """The ``python -m recipes fit`` arguments of a trial: recipe, overrides, the trial's values, its own logger."""
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(spec.save_dir.resolve()), "name": spec.study_name, "version": version,
                            # no placeholder hp_metric: the trial logs its hyperparameters with its score at the end
                            "default_hp_metric": False}}
    return ["fit", "--config", spec.recipe, *override_args(spec.overrides), *override_args(values),
            *override_args({"trainer.logger": logger, "test_after_fit": test_after_fit})]


def resolved_config(args: list[str]) -> str:
    """The full config ``fit`` would run with ``args`` (``--print_config``), or a one-line error naming the bad key."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            PocketbertCLI(args=[*args, "--print_config"])
    except argparse.ArgumentError as error:
        message = str(error)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            return out.getvalue()
        message = err.getvalue().rpartition("error:")[2]
    else:
        raise RuntimeError("--print_config did not exit")
    recipe = args[args.index("--config") + 1]
    raise PocketbertError(f"the training recipe rejects the sweep's search_space or overrides: "
                          f"{concise_config_error(message, [recipe])}")


def check_training_config(spec: SweepRecipe) -> None:
    """Parse the training config at every end of every range (a wrong key or type fails before any training)."""
    for corner in bounds(spec.search_space):
        resolved_config(training_args(spec, corner, version="check", test_after_fit=False))
