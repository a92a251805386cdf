"""The config loading the tools share: a recipe or a run's ``config.yaml``, and the DataModule and exporters it names
(``export``, ``personalize``, ``data``; benchmarks read configs through it too)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback

from callbacks import AppAssets, CoreMLExport, ExportBenchmark, OnnxExport, PyTorchExport, StaticInt8Export
from export import Exporter
from export.files import read_manifest
from lightning_modules.checkpoints import ExportableModel, load_exportable
from lightning_modules.errors import PocketbertError
from recipes.cli import recipe_path


def read_config(path: str) -> dict[str, Any]:
    resolved = Path(recipe_path(path))
    if not resolved.is_file():
        raise PocketbertError(f"config {path} not found; pass a recipe name (news16_cpu.yaml) or a run's config.yaml")
    config = yaml.safe_load(resolved.read_text("utf-8"))
    if not isinstance(config, dict) or "data" not in config:
        raise PocketbertError(f"{resolved} has no data: section; export needs it for the test set")
    return config


def instantiate(config: dict[str, Any]) -> tuple[L.LightningDataModule, list[Exporter]]:
    """The DataModule and the export callbacks the config names (those with an ``export`` step: training-time
    callbacks such as ``MagnitudePruning`` have none), type-checked against their signatures."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    parser.add_argument("--callbacks", type=list[Callback], default=[])
    entries = [entry for entry in (config.get("trainer") or {}).get("callbacks") or []
               if isinstance(entry, dict) and str(entry.get("class_path", "")).startswith("callbacks.")]
    try:
        parsed = parser.parse_object({"data": copy.deepcopy(config["data"]), "callbacks": entries})
        objects = parser.instantiate_classes(parsed)
    except PocketbertError:
        raise
    except Exception as err:
        from recipes.__main__ import user_error

        found = user_error(err)  # a one-line error raised by a class's __init__, wrapped by jsonargparse
        if found is not None:
            raise found from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PocketbertError(f"bad export config: {first}") from None
    callbacks = list(objects["callbacks"])
    for callback in callbacks:
        if isinstance(callback, StaticInt8Export):
            callback.follows(callbacks)  # a QAT run's checkpoint: its files are named qat
    # training-time callbacks (pruning, QAT) have nothing to export
    exporters: list[Exporter] = [c for c in callbacks if isinstance(c, Exporter)]
    exporters = exporters or [PyTorchExport(), OnnxExport(), CoreMLExport(), AppAssets(), ExportBenchmark()]
    return objects["data"], exporters


def load_run(run: Path) -> tuple[ExportableModel, L.LightningDataModule, dict[str, Any]]:
    """A finished run's exported student (the checkpoint its ``export/manifest.json`` names), the DataModule of the
    run's ``config.yaml`` and the manifest: what the benchmarks that re-score a run start from."""
    export_dir = run / "export"
    manifest = read_manifest(export_dir)
    checkpoint = manifest.get("source_checkpoint")
    if checkpoint is None:
        raise PocketbertError(f"{run} has no exported student ({export_dir}/manifest.json names no source_checkpoint); "
                              "pass the run dir of a recipe that exports, e.g. tb_logs/news16_distill_cpu/latest")
    datamodule, _ = instantiate(read_config(str(run / "config.yaml")))
    return load_exportable(checkpoint), datamodule, manifest
