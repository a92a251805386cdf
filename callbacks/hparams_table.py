"""A run's row in TensorBoard's HParams tab: the hyperparameters a user tunes, the best validation score, test
figures."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from typing_extensions import override

from export import ExportError

Scalar = float | int | str | bool
ColumnType = Literal["float", "string", "bool"]
_TYPES: dict[str, int] = {"float": api_pb2.DATA_TYPE_FLOAT64, "string": api_pb2.DATA_TYPE_STRING,
                          "bool": api_pb2.DATA_TYPE_BOOL}


class HParamsTable(L.Callback):
    """Writes the run's HParams session once at fit start, and ``hp_metric``: the best ``metric`` so far, after every
    validation.

    Lightning's own hyperparameter logging is turned off for the run: it logged every ``__init__`` argument (internal
    ones such as ``_instantiator`` included) and a placeholder ``hp_metric`` of -1. TensorBoard takes the table's
    columns from the experiment summary of one run (whichever it reads first), so every run lists the same
    ``vocabulary``; a run's own row holds only ``columns``, the values that apply to it (other cells stay empty).

    Args:
        columns: This run's hyperparameters, name -> value.
        vocabulary: Every column the table may have, name -> ``float``, ``string`` or ``bool``; default: ``columns``.
        metric: The validation metric whose best value is ``hp_metric``.
        mode: ``max`` or ``min``: which value of ``metric`` is best.
        table_metrics: Further metrics of the table, logged by the run itself (e.g. the test after fit).
        defer: Write the session only when :meth:`write_session` is called (a sweep trial adds its state at the end).
    """

    def __init__(self, columns: dict[str, Scalar], vocabulary: dict[str, ColumnType] | None = None,
                 metric: str = "val_macro_f1", mode: Literal["max", "min"] = "max",
                 table_metrics: Sequence[str] = ("test_acc", "test_macro_f1"), defer: bool = False) -> None:
        if mode not in ("max", "min"):
            raise ExportError(f"HParamsTable mode must be max or min, got {mode!r}")
        self.columns = dict(columns)
        self.vocabulary = dict(vocabulary or {name: column_type(value) for name, value in columns.items()})
        self.metric, self.mode, self.defer = metric, mode, defer
        self.table_metrics = ["hp_metric", *table_metrics]
        self.best: float | None = None
        self.written = False

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # runs before Lightning logs hyperparameters; the flag stays off for the test after fit (same Trainer)
        trainer.enable_autolog_hparams = False

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_yaml(trainer)
        if not self.defer:
            self.write_session(trainer)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None or not math.isfinite(float(value)):
            return
        candidates = [float(value), *([] if self.best is None else [self.best])]
        checkpoint = trainer.checkpoint_callback  # a resumed run: the best of the epochs before the resume
        earlier = getattr(checkpoint, "best_model_score", None)
        if getattr(checkpoint, "monitor", None) == self.metric and earlier is not None:
            candidates.append(float(earlier))
        self.best = max(candidates) if self.mode == "max" else min(candidates)
        for logger in trainer.loggers:
            logger.log_metrics({"hp_metric": self.best}, step=trainer.global_step)

    @rank_zero_only
    def write_session(self, trainer: L.Trainer, extra_columns: dict[str, Scalar] | None = None,
                      extra_metrics: Sequence[str] = ()) -> None:
        """The experiment summary (the table's columns) and this run's values, once."""
        if self.written:
            return
        columns = {**self.columns, **(extra_columns or {})}
        vocabulary = {**self.vocabulary, **{k: column_type(v) for k, v in (extra_columns or {}).items()}}
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            # Lightning's TensorBoardLogger writes its hparams summaries through the same file writer
            writer: Any = logger.experiment._get_file_writer()
            experiment = api_pb2.Experiment(
                hparam_infos=[api_pb2.HParamInfo(name=name, type=_TYPES[kind]) for name, kind in vocabulary.items()],
                metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag))
                              for tag in [*self.table_metrics, *extra_metrics]])
            start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
            for name, value in columns.items():
                if isinstance(value, bool):
                    start.hparams[name].bool_value = value
                elif isinstance(value, int | float):
                    start.hparams[name].number_value = float(value)
                else:
                    start.hparams[name].string_value = str(value)
            writer.add_summary(_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(
                experiment=experiment)))
            writer.add_summary(_summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(
                session_start_info=start)))
            writer.flush()
        self.written = True

    @rank_zero_only
    def _write_yaml(self, trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
                save_hparams_to_yaml(Path(logger.log_dir) / logger.NAME_HPARAMS_FILE, self.columns)


def column_type(value: Scalar) -> ColumnType:
    return "bool" if isinstance(value, bool) else "float" if isinstance(value, int | float) else "string"


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])
