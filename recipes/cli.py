"""LightningCLI for the recipes: subclass mode, linked arguments, and a test + summary after ``fit``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from recipes import RECIPES_DIR

CONFIG_FLAGS = ("--config", "-c")


def resolve_config_names(argv: list[str]) -> list[str]:
    """Let ``--config news16.yaml`` (or ``news16``) name a recipe shipped in the recipes folder."""
    resolved = list(argv)
    for i, arg in enumerate(resolved):
        flag, eq, value = arg.partition("=")
        if eq and flag in CONFIG_FLAGS:
            resolved[i] = f"{flag}={recipe_path(value)}"
        elif arg in CONFIG_FLAGS and i + 1 < len(resolved):
            resolved[i + 1] = recipe_path(resolved[i + 1])
    return resolved


def recipe_path(value: str) -> str:
    if Path(value).exists() or value.lstrip().startswith(("{", "[")):
        return value
    for candidate in (RECIPES_DIR / value, RECIPES_DIR / f"{value}.yaml"):
        if candidate.is_file():
            return str(candidate)
    return value


class PocketbertCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` over any LightningModule + DataModule a recipe names."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        if args is None:
            args = sys.argv[1:]
        # LightningCLI warns when given args while sys.argv also has some; ours are sys.argv's, resolved.
        sys.argv = sys.argv[:1]
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=resolve_config_names(args),
            run=run,
            auto_configure_optimizers=False,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One source for values that must agree: the DataModule owns them, the model receives them.
        parser.link_arguments("data.init_args.max_length", "model.init_args.max_length")
        parser.link_arguments("data.tokenizer_path", "model.init_args.tokenizer", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="After fit, test the best checkpoint and print accuracy, macro-F1 and the run dir.")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True) or self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        print_summary(self.trainer, dict(results[0]) if results else {}, best)


def link_latest(run_dir: Path, best_checkpoint: str) -> None:
    """``<run dir>/best.ckpt`` -> the best checkpoint and ``tb_logs/<name>/latest`` -> this run, so a later recipe
    (a student distilled from this teacher) can name ``tb_logs/<name>/latest/best.ckpt``."""
    if best_checkpoint:
        replace_symlink(run_dir / "best.ckpt", Path(best_checkpoint).resolve())
    replace_symlink(run_dir.parent / "latest", Path(run_dir.name))


def replace_symlink(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)  # atomic: readers see the old link or the new one, never none


@rank_zero_only
def print_summary(trainer: L.Trainer, metrics: dict[str, Any], best_checkpoint: str) -> None:
    """Write ``test_metrics.json`` into the run dir and print the numbers and where the files went."""
    run_dir = Path(trainer.log_dir or ".")
    scalars = {k: float(v) for k, v in metrics.items() if "/" not in k}
    scalars["best_checkpoint"] = best_checkpoint  # type: ignore[assignment]
    (run_dir / "test_metrics.json").write_text(json.dumps(scalars, indent=2) + "\n")
    link_latest(run_dir, best_checkpoint)
    print(
        "\n"
        f"test accuracy {metrics.get('test_acc', float('nan')):.4f}   "
        f"macro-F1 {metrics.get('test_macro_f1', float('nan')):.4f}\n"
        f"run dir:         {run_dir}\n"
        f"best checkpoint: {best_checkpoint or '(none)'}  (also {run_dir / 'best.ckpt'})\n"
        f"metrics:         {run_dir / 'test_metrics.json'}\n"
        f"TensorBoard:     tensorboard --logdir {run_dir.parent.parent}",
        flush=True,
    )
