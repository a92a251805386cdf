"""A sweep's search space: dotted config keys of a training recipe, each sampled by Optuna from a range or a list."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import optuna
import yaml

from lightning_modules.errors import PocketbertError

ParamType = Literal["float", "int", "categorical"]
CategoricalValue = str | int | float | bool | None


@dataclass
class SearchParam:
    """How one config value of the training recipe is sampled in every trial.

    Args:
        low: Smallest value of a ``float`` or ``int`` range.
        high: Largest value of a ``float`` or ``int`` range (included).
        log: Sample on a log scale (learning rates, weight decay); needs ``low`` > 0.
        step: Sample on a grid with this spacing from ``low`` (not with ``log``).
        choices: Sample one of these values (a categorical parameter), e.g. ``[16, 32, 64]``.
        type: ``float``, ``int`` or ``categorical``. Left out, it is inferred: ``choices`` make it categorical,
            integer ``low`` and ``high`` make it ``int``, anything else is ``float``.
    """

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[CategoricalValue] | None = None
    type: ParamType | None = None

    @property
    def span(self) -> tuple[int | float, int | float]:
        """``(low, high)`` of a ``float`` or ``int`` range (both are checked present when the sweep is read)."""
        if self.low is None or self.high is None:
            raise PocketbertError(f"a {self.kind} search-space entry needs low and high, got {self.low}, {self.high}")
        return self.low, self.high

    @property
    def kind(self) -> ParamType:
        if self.type is not None:
            return self.type
        if self.choices is not None:
            return "categorical"
        if isinstance(self.low, int) and isinstance(self.high, int):
            return "int"
        return "float"


def default_search_space() -> dict[str, SearchParam]:
    """Learning rate on a log scale and dropout: what a sweep tunes when the recipe names nothing else."""
    return {
        "model.init_args.learning_rate": SearchParam(low=1e-5, high=1e-2, log=True),
        "model.init_args.dropout": SearchParam(low=0.0, high=0.3),
    }


def check_search_space(space: dict[str, SearchParam]) -> None:
    """Fail with one line naming the key and the fix when a parameter cannot be sampled."""
    if not space:
        raise PocketbertError("search_space is empty: name at least one dotted config key, e.g. "
                              "model.init_args.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}")
    for key, param in space.items():
        check_param(key, param)


def check_param(key: str, param: SearchParam) -> None:
    where = f"search_space.{key}"
    if not key or key.startswith(("-", ".")) or key.endswith(".") or " " in key:
        raise PocketbertError(f"{where}: not a dotted config key; write it like model.init_args.learning_rate")
    kind = param.kind
    if kind == "categorical":
        if not param.choices:
            raise PocketbertError(f"{where}: a categorical parameter needs choices: [a, b, ...]")
        if param.low is not None or param.high is not None or param.log or param.step is not None:
            raise PocketbertError(f"{where}: give either choices or low/high, not both")
        return
    if param.choices is not None:
        raise PocketbertError(f"{where}: choices need type categorical (or leave type out), not {kind}")
    if param.low is None or param.high is None:
        raise PocketbertError(f"{where}: a {kind} parameter needs low and high (or choices: [...])")
    if not (math.isfinite(param.low) and math.isfinite(param.high)):
        raise PocketbertError(f"{where}: low and high must be finite numbers")
    if param.low >= param.high:
        raise PocketbertError(f"{where}: low ({param.low}) must be below high ({param.high})")
    if param.log and param.low <= 0:
        raise PocketbertError(f"{where}: a log-scale range needs low > 0, got {param.low}")
    if param.log and param.step is not None:
        raise PocketbertError(f"{where}: step and log cannot be combined; drop one")
    if param.step is not None and param.step <= 0:
        raise PocketbertError(f"{where}: step must be positive, got {param.step}")
    if kind == "int" and not all(float(v).is_integer() for v in (param.low, param.high, param.step or 1)):
        raise PocketbertError(f"{where}: an int parameter needs whole-number low, high and step")


def check_fixed_values(space: dict[str, SearchParam], values: dict[str, Any], what: str) -> None:
    """Values given for a trial (``enqueue``) must name search-space keys and lie inside their ranges."""
    for key, value in values.items():
        if key not in space:
            raise PocketbertError(f"{what}: {key} is not in search_space {sorted(space)}; add it there or drop it")
        param = space[key]
        if param.kind == "categorical":
            if value not in (param.choices or []):
                raise PocketbertError(f"{what}: {key}={value!r} is not one of the choices {param.choices}")
        elif not isinstance(value, int | float) or not param.span[0] <= value <= param.span[1]:
            raise PocketbertError(f"{what}: {key}={value!r} is outside [{param.low}, {param.high}]")


def suggest(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """One value per key, asked from the trial (so Optuna records it and the sampler learns from it)."""
    values: dict[str, Any] = {}
    for key, param in space.items():
        kind = param.kind
        if kind == "categorical":
            values[key] = trial.suggest_categorical(key, list(param.choices or []))
        elif kind == "int":
            step = int(param.step) if param.step is not None else 1
            low, high = param.span
            values[key] = trial.suggest_int(key, int(low), int(high), step=step, log=param.log)
        else:
            low, high = param.span
            values[key] = trial.suggest_float(key, float(low), float(high), log=param.log, step=param.step)
    return values


def bounds(space: dict[str, SearchParam]) -> list[dict[str, Any]]:
    """Value sets that touch every end of every range (and every choice): a config check that covers the space."""
    corners: list[dict[str, Any]] = [{}, {}]
    for key, param in space.items():
        ends: list[Any] = list(param.choices or []) if param.kind == "categorical" else list(param.span)
        while len(corners) < len(ends):
            corners.append(dict(corners[-1]))
        for i, corner in enumerate(corners):
            value = ends[min(i, len(ends) - 1)]
            corner[key] = int(value) if param.kind == "int" else value
    return corners


def cli_value(value: Any) -> str:
    """``value`` as YAML that reads back as the same value (``1.0e-05``, not ``1e-05``, which YAML 1.1 reads as a
    string), in flow style so dicts and lists fit on one command-line argument."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def override_args(values: dict[str, Any]) -> list[str]:
    """``{"model.init_args.dropout": 0.1}`` -> ``["--model.init_args.dropout=0.1"]`` for the training CLI."""
    return [f"--{key}={cli_value(value)}" for key, value in values.items()]
