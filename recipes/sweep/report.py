"""What a sweep leaves behind: a summary table, the best trial as a ready-to-run recipe, and Optuna's plots."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from export.files import atomic_path, write_text

BEST_CONFIG = "best.yaml"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"


def report(study: optuna.Study, study_dir: Path, *, metric: str, best_config: Callable[[dict[str, Any]], str],
           elapsed: float) -> None:
    """Print the table, write ``best.yaml`` (from ``best_config(best params)``) and the plots into ``study_dir``."""
    trials = study.get_trials(deepcopy=False)
    print("\n" + summary_table(trials, metric, study), flush=True)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        print(f"no trial completed yet: no best config (ran {elapsed:.0f} s)", flush=True)
        return
    best = study.best_trial
    path = write_best_config(study_dir / BEST_CONFIG, best, metric, best_config(best.params))
    print(f"best trial {best.number}: {metric} {best.value:.4f}\n"
          f"best config:   {path}   (rerun: python -m recipes fit --config {path})", flush=True)
    for line in save_plots(study, study_dir):
        print(line, flush=True)
    print(f"TensorBoard:   tensorboard --logdir {study_dir}   (HParams tab compares the trials)\n"
          f"took {elapsed:.0f} s in this run", flush=True)


def summary_table(trials: list[FrozenTrial], metric: str, study: optuna.Study) -> str:
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    best_number = study.best_trial.number if counts[TrialState.COMPLETE] else None
    keys = sorted({key for t in trials for key in t.params})
    header = ["", "trial", "state", metric, *keys, "seconds"]
    rows = [header]
    for t in trials:
        value = t.value if t.value is not None else _last_reported(t)
        seconds = t.duration.total_seconds() if t.duration is not None else float("nan")
        rows.append(["*" if t.number == best_number else "", str(t.number), t.state.name, _fmt(value),
                     *(_fmt(t.params.get(key)) for key in keys), f"{seconds:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    totals = ", ".join(f"{counts[s]} {s.name.lower()}" for s in TrialState if counts[s])
    return f"study {study.study_name}: {len(trials)} trials ({totals}); * = best\n" + "\n".join(lines)


def _last_reported(trial: FrozenTrial) -> float | None:
    """A pruned trial's score: the last value it reported before it was stopped."""
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_best_config(path: Path, best: FrozenTrial, metric: str, config: str) -> Path:
    """The best trial's full config with a recipe header; written to a temp file, then renamed."""
    values = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    header = (
        f"# {path.stem}: the best trial (#{best.number}, {metric} {best.value:.4f}) of an Optuna sweep, as a recipe.\n"
        "#\n"
        f"# What it does: reruns trial {best.number} with the same seed and values ({values}) and its budget,\n"
        "#   logging next to the trials as version_N, then tests the best checkpoint.\n"
        f"# How to run: python -m recipes fit --config {path}\n"
        "# What must run first: nothing; the data comes from NEWS_DATA_DIR, as for the recipe it came from.\n"
    )
    write_text(path, header + config)
    return path


def save_plots(study: optuna.Study, study_dir: Path) -> list[str]:
    """Optimization history and parameter importances as PNGs; importances need two completed trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    lines = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: list[tuple[str, Callable[..., Any]]] = [(HISTORY_PLOT, optuna_plots.plot_optimization_history)]
    if len(complete) >= 2:
        plots.append((IMPORTANCE_PLOT, optuna_plots.plot_param_importances))
    else:
        lines.append(f"importance plot: skipped, it needs 2 completed trials ({len(complete)} so far)")
    for name, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
            path = study_dir / name
            with atomic_path(path) as tmp:
                axes.figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(axes.figure)
            lines.append(f"plot:          {path}")
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. every completed trial has equal values
            lines.append(f"{name}: skipped ({err})")
    return lines
