"""Points ``tb_logs/<name>/latest`` at a run as soon as it has a best checkpoint (the next recipe reads through it)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from typing_extensions import override

from lightning_modules.runs import point_latest


class LatestRun(L.Callback):
    """``<run dir>/best.ckpt`` -> the best checkpoint, and ``<run dir>/../latest`` names the run, from the first best
    checkpoint on: a student recipe names ``tb_logs/<teacher>/latest/best.ckpt``, so a run that is interrupted, whose
    export fails or that skips the test after fit is still the one it finds. A run without checkpointing (e.g.
    pretraining, whose output is written at fit end) becomes ``latest`` when fit ends. The python -m recipes ``fit``
    adds it first among the callbacks, so it runs before the fit-end exporters.
    """

    def __init__(self) -> None:
        self.linked = ""

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after this epoch's validation, where ModelCheckpoint (always the last callback) saved its best
        self._point(trainer, require_checkpoint=True)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._point(trainer, require_checkpoint=True)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._point(trainer, require_checkpoint=True)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # fit ended normally, the LightningModule's own fit-end output included
            self._point(trainer, require_checkpoint=False)

    def _point(self, trainer: L.Trainer, require_checkpoint: bool) -> None:
        run_dir = _run_dir(trainer) if trainer.is_global_zero else None
        if run_dir is None:
            return
        checkpoint = trainer.checkpoint_callback
        best = str(getattr(checkpoint, "best_model_path", "") or "") if checkpoint is not None else ""
        if best and Path(best).is_file():
            if best != self.linked:
                _replace_symlink(run_dir / "best.ckpt", Path(best).resolve())
                self.linked = best
        elif require_checkpoint:
            return
        if run_dir.is_dir():
            point_latest(run_dir)


def _run_dir(trainer: L.Trainer) -> Path | None:
    """The logger's version folder, read without ``trainer.log_dir`` (a collective call under DDP, and this runs
    on rank 0 alone); None without a logger that names runs (then there is no ``latest`` to keep)."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if isinstance(logger, TensorBoardLogger | CSVLogger):
        return Path(logger.log_dir)
    return None


def _replace_symlink(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)  # atomic: readers see the old link or the new one, never none
