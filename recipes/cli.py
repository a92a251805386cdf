"""LightningCLI for the recipes: subclass mode, linked arguments, and a test + summary after ``fit``."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from callbacks import HParamsTable
from export.files import write_text
from lightning_modules.checkpoints import read_checkpoint
from lightning_modules.distillation import DistillationModule
from lightning_modules.errors import PocketbertError
from lightning_modules.runs import resolve_run_path, run_dir_of_checkpoint
from recipes import CONFIGS_DIR
from recipes.console import configure_trainer, export_summary, quiet_third_party
from recipes.latest_run import LatestRun
from recipes.run_columns import VOCABULARY, run_columns

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
    if resolve_run_path(value).exists():  # tb_logs/<name>/latest/config.yaml
        return str(resolve_run_path(value))
    for candidate in (CONFIGS_DIR / value, CONFIGS_DIR / f"{value}.yaml"):
        if candidate.is_file():
            return str(candidate)
    return value


class PocketbertCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` over any LightningModule + DataModule a recipe names."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        # The args go through sys.argv, not LightningCLI's `args`: DDP's launcher starts the other ranks by running
        # sys.argv again, so it must hold the real command (with recipe names resolved).
        sys.argv = [sys.argv[0], *resolve_config_names(sys.argv[1:] if args is None else args)]
        quiet_third_party()
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            # raise instead of printing usage + a multi-line message; recipes/__main__.py condenses it to one line
            parser_kwargs={"exit_on_error": False, "prog": "python -m recipes"},
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


    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        # Progress bar or progress lines (stdout a terminal or a file), the summary, predict's writer: see console.py.
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        configure_trainer(config["trainer"], self.subcommand, interactive=sys.stdout.isatty())
        if self.subcommand in (None, "fit"):
            raw = self.config[self.subcommand] if self.subcommand else self.config
            # first: `latest` moves before the fit-end exporters run (one may fail)
            config["trainer"]["callbacks"][:0] = [LatestRun(), HParamsTable(run_columns(raw), VOCABULARY)]
        else:
            self._log_beside_checkpoint(config)
        return super().instantiate_trainer(**kwargs)

    def _log_beside_checkpoint(self, config: Any) -> None:
        """``validate``/``test``/``predict`` make no TensorBoard run of their own (an empty ``version_N`` would show
        up as a run) and write nothing into the checkpoint's run but their files: its figures stay the fit's, its
        config.yaml the one that reruns it. Lightning prints their metrics; predictions land in the checkpoint's run
        folder (or beside a checkpoint kept elsewhere)."""
        self._resolve_ckpt_path(config["trainer"].get("logger"))  # `last` is looked up in the recipe's logger dir
        config["trainer"]["logger"] = False
        self.save_config_callback = None
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            config["trainer"]["default_root_dir"] = str(run_dir_of_checkpoint(ckpt_path) or Path(ckpt_path).parent)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters while parsing: check the file first, so a truncated
        # or corrupted one gives one line instead of a zip-reader traceback.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and not str(ckpt_path).startswith("registry"):
            ckpt_path = self.config[subcommand]["ckpt_path"] = str(resolve_run_path(ckpt_path))  # .../latest/...
        if ckpt_path and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        self._check_run_dir_writable()
        if isinstance(self.model, DistillationModule):
            self.model.check_teachers()  # before the data is tokenized: a missing teacher fails in seconds
        self._resolve_ckpt_path(self.trainer.logger)

    def _check_run_dir_writable(self) -> None:
        save_dir = Path(getattr(self.trainer.logger, "save_dir", None) or self.trainer.default_root_dir)
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=save_dir):
                pass
        except OSError as err:
            raise PocketbertError(f"cannot write run output to {save_dir} ({err.strerror}); pass "
                                  "--trainer.logger.init_args.save_dir DIR with a writable folder") from None

    def _resolve_ckpt_path(self, logger: Any) -> None:
        """``--ckpt_path last`` means the newest ``last.ckpt`` of this recipe's earlier runs (a resumed run logs to a
        new version dir, where Lightning itself would find nothing); any file path is checked before use."""
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            # Checkpoints load as data, never unpickled as code (our own types are allow-listed in checkpoints.py).
            config["weights_only"] = True
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            runs = Path(getattr(logger, "save_dir", None) or ".") / str(getattr(logger, "name", "") or "")
            candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
            if not candidates:
                raise PocketbertError(f"--ckpt_path last: no checkpoints/last.ckpt under {runs}/*; run fit first "
                                      "(with a ModelCheckpoint that has save_last: true) or give a checkpoint path")
            config["ckpt_path"] = str(candidates[-1])
            print(f"{'resuming from' if self.subcommand == 'fit' else 'checkpoint:'} {candidates[-1]}", flush=True)
        elif ckpt_path not in (None, "best", "hpc", "registry") and not str(ckpt_path).startswith("registry:"):
            read_checkpoint(ckpt_path)  # one-line error for a missing, truncated or corrupted file

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True) or self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        run_dir = Path(self.trainer.log_dir or ".")  # a collective call under DDP: every rank must make it
        print_summary(run_dir, dict(results[0]) if results else {}, best)


@rank_zero_only
def print_summary(run_dir: Path, metrics: dict[str, Any], best_checkpoint: str) -> None:
    """Write ``test_metrics.json`` into the run dir and print the numbers and where the files went."""
    scalars: dict[str, float | str] = {k: float(v) for k, v in metrics.items() if "/" not in k}
    scalars["best_checkpoint"] = best_checkpoint
    write_text(run_dir / "test_metrics.json", json.dumps(scalars, indent=2) + "\n")
    if "test_acc" in metrics:
        figures = f"test accuracy {metrics['test_acc']:.4f}   macro-F1 {metrics.get('test_macro_f1', float('nan')):.4f}"
    else:  # e.g. pretraining: held-out masked-LM loss and accuracy
        figures = "   ".join(f"{name} {value:.4f}" for name, value in scalars.items() if isinstance(value, float))
    print(
        "\n"
        f"{figures}\n"
        f"run dir:         {run_dir}\n"
        f"best checkpoint: {best_checkpoint or '(none)'}  (also {run_dir / 'best.ckpt'})\n"
        f"metrics:         {run_dir / 'test_metrics.json'}\n"
        + "".join(f"{line}\n" for line in export_summary(run_dir))
        + f"TensorBoard:     tensorboard --logdir {run_dir.parent.parent}",
        flush=True,
    )
