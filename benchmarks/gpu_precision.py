"""Mixed precision on one GPU: epoch time of the news16_cpu teacher recipe in bf16-mixed, 32-true and 16-mixed.

Builds the trainer, model and data of ``recipes/configs/news16_cpu.yaml`` through the CLI (``run=False``, so exactly
what the recipe trains) with ``--trainer.accelerator gpu`` and each precision, interleaved over ``--rounds`` rounds, and
trains ``--epochs`` epochs per run. Each epoch is timed twice, CUDA synchronized: its training batches alone, and the
whole epoch with validation. The first epoch of every run (CUDA and autocast warm-up) is not counted. Prints a Markdown
table (medians, and the speed of each precision relative to 32-true) and writes JSON.

    NEWS_DATA_DIR=../shared/data python benchmarks/gpu_precision.py --limit-per-class 1000

Needs a CUDA GPU; the recipe is the CPU teacher's shape (4 layers, 256 wide), small enough that a step is bound by
kernel launches rather than by matrix maths, which is what the ratio then says.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recipes.cli import PocketbertCLI  # noqa: E402


class EpochTimer(L.Callback):
    """Seconds of each epoch's training batches, and of the whole epoch (validation included)."""

    def __init__(self) -> None:
        self.train_seconds: list[float] = []
        self.epoch_seconds: list[float] = []
        self.steps: list[int] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            torch.cuda.synchronize()
            self.train_seconds.append(time.perf_counter() - self._start)
            self.steps.append(batch_idx + 1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.cuda.synchronize()
        self.epoch_seconds.append(time.perf_counter() - self._start)


def run(precision: str, epochs: int, limit: int | None, save_dir: Path) -> dict[str, Any]:
    args = ["--config", "news16_cpu.yaml", "--trainer.accelerator", "gpu", "--trainer.devices", "1",
            "--trainer.precision", precision, "--trainer.max_epochs", str(epochs),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.save_dir", str(save_dir)]
    if limit is not None:
        args += ["--data.init_args.limit_per_class", str(limit)]
    cli = PocketbertCLI(args=args, run=False)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    return {"precision": precision, "train_seconds": timer.train_seconds, "epoch_seconds": timer.epoch_seconds,
            "steps_per_epoch": timer.steps[0] if timer.steps else 0,
            "val_acc": float(metrics["val_acc"]), "val_macro_f1": float(metrics["val_macro_f1"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--epochs", type=int, default=2, help="per run; the first is warm-up (at least 2)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the precisions")
    parser.add_argument("--limit-per-class", type=int, default=None, help="rows per class (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_precision.json")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; this benchmark times GPU training")
    if options.epochs < 2:
        raise SystemExit("error: --epochs must be at least 2 (the first epoch is warm-up)")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pocketbert-gpu-bench-") as tmp:
        for round_index in range(options.rounds):
            for precision in options.precisions:
                result = run(precision, options.epochs, options.limit_per_class, Path(tmp))
                runs.append({"round": round_index, **result})
                print(f"round {round_index} {precision}: train {result['train_seconds']} s, "
                      f"epoch {result['epoch_seconds']} s", flush=True)
    rows = []
    for precision in options.precisions:
        mine = [r for r in runs if r["precision"] == precision]
        train = statistics.median(s for r in mine for s in r["train_seconds"][1:])
        epoch = statistics.median(s for r in mine for s in r["epoch_seconds"][1:])
        rows.append({"precision": precision, "train_s": train, "epoch_s": epoch,
                     "steps_per_s": mine[0]["steps_per_epoch"] / train, "val_acc": mine[-1]["val_acc"],
                     "val_macro_f1": mine[-1]["val_macro_f1"]})
    base = next((row for row in rows if row["precision"] == "32-true"), rows[0])
    for row in rows:
        row["speedup_vs_" + base["precision"]] = base["train_s"] / row["train_s"]
    device = torch.cuda.get_device_name()
    lines = [f"{device}, torch {torch.__version__}, news16_cpu recipe, limit_per_class {options.limit_per_class}, "
             f"{runs[0]['steps_per_epoch']} steps/epoch, median of epochs 2..{options.epochs} over "
             f"{options.rounds} round(s)", "",
             f"| precision | train s/epoch | epoch s (with val) | steps/s | speed vs {base['precision']} | val acc |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['precision']} | {row['train_s']:.2f} | {row['epoch_s']:.2f} | {row['steps_per_s']:.1f} "
                     f"| {row['speedup_vs_' + base['precision']]:.2f}x | {row['val_acc']:.4f} |")
    print("\n".join(lines))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps({"device": device, "torch": torch.__version__, "settings": vars(options) | {
        "out": str(options.out)}, "rows": rows, "runs": runs}, indent=2) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
