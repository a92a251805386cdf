"""What a run prints: progress that reads well in a terminal and in a log file, no third-party noise, a summary.

- Progress: on a terminal, Lightning's tqdm bar without ``v_num``; when stdout is a file or a pipe, a bar shows
  nothing until the run ends, so ``fit`` prints :class:`callbacks.ProgressLines` instead (every 30 s, or
  ``POCKETBERT_PROGRESS_SECONDS``).
- Model summary: parameters only (Lightning's default printed ``Total FLOPs: 0``; see
  :class:`callbacks.ParameterSummary`).
- ``predict`` writes its predictions (:class:`callbacks.PredictionWriter`) unless the recipe lists a writer.
- Noise silenced where it starts: Lightning's "💡 Tip" lines advertising litlogger/litmodels (printed on every run,
  no switch), lightning 2.6's ``LeafSpec()`` ``FutureWarning`` (its ``utilities/_pytree.py`` builds one per batch
  flatten; torch 2.13 deprecated the class), and every other deprecation warning shown at most once per run.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter, ModelSummary, ProgressBar

from callbacks import ParameterSummary, PredictionWriter, ProgressLines, TerminalProgressBar

PROGRESS_SECONDS_ENV = "POCKETBERT_PROGRESS_SECONDS"
_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"  # where rank_zero_info() writes


class _DropAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_third_party() -> None:
    """Silence the third-party lines that carry no information about this run (idempotent)."""
    logger = logging.getLogger(_RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropAdvertising) for f in logger.filters):
        logger.addFilter(_DropAdvertising())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    _show_deprecations_once()


def _show_deprecations_once() -> None:
    """Python shows a warning once per code location, but libraries that reset the warning filters (every
    ``catch_warnings`` block) make the same one reappear; show each deprecation message once per process."""
    original = warnings.showwarning
    if getattr(original, "_pocketbert_once", False):
        return
    seen: set[tuple[type[Warning], str]] = set()

    def show_once(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DeprecationWarning | FutureWarning):
            key = (category, str(message))
            if key in seen:
                return
            seen.add(key)
        original(message, category, *args, **kwargs)

    show_once._pocketbert_once = True  # type: ignore[attr-defined]
    warnings.showwarning = show_once


def configure_trainer(trainer_config: dict[str, Any], subcommand: str | None, interactive: bool) -> None:
    """Add the console callbacks to a Trainer's config (in place) before the Trainer is built."""
    if subcommand in ("validate", "test", "predict"):
        # a recipe's ModelCheckpoint restored into a new version dir: only a resumed fit cares what it cannot reload
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
    callbacks = list(trainer_config.get("callbacks") or [])
    if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar)
                                                                           for c in callbacks):
        if interactive:
            callbacks.append(TerminalProgressBar())
        else:
            trainer_config["enable_progress_bar"] = False
            if subcommand in (None, "fit") and not any(isinstance(c, ProgressLines) for c in callbacks):
                callbacks.append(ProgressLines(interval_s=float(os.environ.get(PROGRESS_SECONDS_ENV, "30"))))
    if trainer_config.get("enable_model_summary") is not False and not any(
            isinstance(c, ModelSummary | ParameterSummary) for c in callbacks):
        trainer_config["enable_model_summary"] = False  # ours replaces Lightning's default, which prints FLOPs
        callbacks.append(ParameterSummary())
    if subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
        callbacks.append(PredictionWriter())
    trainer_config["callbacks"] = callbacks


def export_summary(run_dir: Path) -> list[str]:
    """Lines on the run's exports: the shipped variant's numbers, the budget verdicts, where the files are."""
    export_dir = run_dir / "export"
    benchmark_file = export_dir / "benchmark.json"
    if not benchmark_file.is_file():
        return [f"export:          {export_dir} (manifest.json)"] if (export_dir / "manifest.json").is_file() else []
    benchmark = json.loads(benchmark_file.read_text("utf-8"))
    shipped = benchmark.get("shipped")
    row: dict[str, Any] = next((r for r in benchmark.get("variants", []) if r.get("variant") == shipped), {})
    figures = [f"{row['size_mb']:.2f} MB" if "size_mb" in row else "",
               f"accuracy {row['accuracy']:.4f}" if "accuracy" in row else "",
               f"macro-F1 {row['macro_f1']:.4f}" if "macro_f1" in row else "",
               f"p50 {row['p50_ms']:.2f} ms" if "p50_ms" in row else ""]
    lines = [f"shipped variant: {shipped} ({row.get('path', '?')}): {', '.join(f for f in figures if f)}",
             *(f"                 {verdict}" for verdict in benchmark.get("budget_verdicts", [])),
             f"export:          {export_dir} (manifest.json, benchmark.md)",
             f"classify text:   python -m recipes classify --run {run_dir} --input FILE.txt"]
    return lines
