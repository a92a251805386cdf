"""``python -m recipes export --ckpt PATH``: write the fit-end export artifacts from an existing checkpoint.

Runs the same export steps as the fit-end callbacks (``callbacks/``), configured by the same YAML: the ``data:``
section gives the real test set, the ``callbacks.*`` entries of ``trainer.callbacks`` say what to write (all
exporters with defaults when the config lists none). By default the config is the run's own ``config.yaml`` beside
the checkpoint and the files go to ``<run dir>/export/``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback

from callbacks import AppAssets, CoreMLExport, ExportBenchmark, OnnxExport, PyTorchExport, StaticInt8Export
from callbacks.context import eval_set, train_split
from export import ExportContext, Exporter, ShippedModel, read_manifest, start_manifest
from lightning_modules.checkpoints import load_exportable
from lightning_modules.errors import PocketbertError
from lightning_modules.runs import run_dir_of_checkpoint
from recipes.cli import recipe_path
from recipes.tool_parser import run_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipes export",
        description="Quantize, export (PyTorch, ONNX, Core ML + updatable head, app assets) and benchmark a "
                    "trained checkpoint without training, exactly as the fit-end export callbacks do.")
    parser.add_argument("--ckpt", required=True, type=run_path,
                        help="a pocketbert checkpoint (e.g. <run dir>/best.ckpt)")
    parser.add_argument("--config", help="recipe or run config.yaml whose data: section gives the test set and whose "
                        "trainer.callbacks list the exporters (default: config.yaml of the checkpoint's run)")
    parser.add_argument("--out", type=run_path,
                        help="export folder (default: <run dir>/export, or beside the checkpoint)")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checkpoint: Path = args.ckpt
    exportable = load_exportable(checkpoint)
    run_dir = run_dir_of_checkpoint(checkpoint)
    config_path = args.config or (str(run_dir / "config.yaml") if run_dir else None)
    if config_path is None:
        raise PocketbertError(f"no config.yaml beside {checkpoint}; pass --config RECIPE.yaml for its data: section")
    datamodule, exporters = instantiate(read_config(config_path))
    out: Path = args.out or (run_dir or checkpoint.parent) / "export"
    shipped = ShippedModel(exportable.model, exportable.label_names, exportable.vocab, exportable.max_length,
                           source=str(checkpoint), tokenizer_settings=exportable.tokenizer_settings)
    examples, texts, training_ids = eval_set(datamodule, shipped)
    writer = None
    if run_dir is not None and args.out is None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir))
    train_texts, train_labels = train_split(datamodule, shipped)
    context = ExportContext(shipped, examples, out, texts=texts, train_texts=train_texts, train_labels=train_labels,
                            writer=writer, training_ids=training_ids)
    start_manifest(out, source_checkpoint=str(checkpoint), label_names=shipped.label_names,
                   max_length=shipped.max_length, parameters=shipped.num_parameters, test_examples=len(examples))
    try:
        for exporter in exporters:
            print(f"export: {type(exporter).__name__} ...", flush=True)
            exporter.export(context)
    finally:
        if writer is not None:
            writer.close()
    artifacts = read_manifest(out)["artifacts"]
    print(f"wrote {len(artifacts)} artifacts to {out} (manifest: {out / 'manifest.json'})")
    return 0
