"""``python -m recipes export --ckpt PATH``: write the fit-end export artifacts from an existing checkpoint.

Runs the same export steps as the fit-end callbacks (``callbacks/``), configured by the same YAML: the ``data:``
section gives the real test set, the ``callbacks.*`` entries of ``trainer.callbacks`` say what to write (all
exporters with defaults when the config lists none). By default the config is the run's own ``config.yaml`` beside
the checkpoint and the files go to ``<run dir>/export/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from callbacks.context import eval_set, train_split
from export import ExportContext, ShippedModel, read_manifest, start_manifest
from lightning_modules.checkpoints import load_exportable
from lightning_modules.errors import PocketbertError
from lightning_modules.runs import run_dir_of_checkpoint
from recipes.tools.config import instantiate, read_config
from recipes.tools.parser import run_path


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
