"""Fused AdamW against torch's default CPU AdamW in the quickstart recipes' fits, alternating runs in one process.

Each run fits a recipe (``news16_pretrain_cpu``, ``news16_distill_cpu``) through the CLI for ``--warmup`` + ``--steps``
steps (validation and exports off) with the optimizer the recipes build (``lightning_modules.training.build_adamw``,
fused) or with ``fused=False`` (torch's CPU default: a Python loop over the parameter tensors), in the order fused,
loop, loop, fused, ... On one thread and the process's CPU clock it times every step after the warm-up, and the
clipping + update part of it (from ``on_before_optimizer_step`` to the end of ``optimizer.step``), which is all the two
runs do differently. Without ``--pretrained`` the distillation recipe's student starts from scratch (the same shape
and vocabulary pruning, so the same step cost) and needs no pretraining run first.

    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/adamw_step.py

Prints a Markdown table and writes ``benchmarks/results/adamw_step.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_modules import training  # noqa: E402
from recipes.cli import PocketbertCLI  # noqa: E402

RECIPES = ("news16_pretrain_cpu", "news16_distill_cpu")


class StepTimer(L.Callback):
    """CPU seconds of each step after ``warmup``, and of its clipping + optimizer update."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps: list[float] = []
        self.updates: list[float] = []
        self._step_start: float | None = None
        self._update_start: float | None = None
        self._hook = register_optimizer_step_post_hook(self._after_update)

    def _after_update(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._update_start is not None:
            self.updates.append(time.process_time() - self._update_start)
            self._update_start = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._step_start = time.process_time() if trainer.global_step >= self.warmup else None

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Lightning calls this after backward, before clipping and the update
        self._update_start = time.process_time() if self._step_start is not None else None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self._step_start is not None:
            self.steps.append(time.process_time() - self._step_start)

    def remove(self) -> None:
        self._hook.remove()


def recipe_config(name: str, options: argparse.Namespace, save_dir: Path) -> Path:
    config: dict[str, Any] = yaml.safe_load((REPO / "recipes" / "configs" / f"{name}.yaml").read_text("utf-8"))
    trainer = config["trainer"]
    trainer["callbacks"] = [c for c in trainer.get("callbacks") or [] if not c["class_path"].startswith("callbacks.")]
    trainer.update(max_steps=options.warmup + options.steps, limit_val_batches=0, enable_progress_bar=False)
    trainer["logger"]["init_args"]["save_dir"] = str(save_dir)
    model = config["model"]["init_args"]
    if "pretrained" in model:
        if options.pretrained is not None:
            model["pretrained"] = str(options.pretrained)
        else:  # the pretraining recipe's encoder shape, from scratch
            pretrain = yaml.safe_load((REPO / "recipes" / "configs" / "news16_pretrain_cpu.yaml").read_text("utf-8"))
            del model["pretrained"]
            model["architecture"] = pretrain["model"]["init_args"]["architecture"]
    if options.cache_dir is not None:
        data = config["data"]["init_args"]
        data["cache_dir"] = str(options.cache_dir)
        if "task" in data:
            data["task"]["init_args"]["cache_dir"] = str(options.cache_dir)
    path = save_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    return path


def fit_once(config: Path, fused: bool, warmup: int) -> tuple[float, float]:
    """(median ms per step, median ms of clipping + update) of one fit."""
    adamw = functools.partial(training.build_adamw, fused=fused)
    with mock.patch.object(training, "build_adamw", adamw):
        cli = PocketbertCLI(args=["--config", str(config)], run=False)
        timer = StepTimer(warmup)
        cli.trainer.callbacks.append(timer)
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        finally:
            timer.remove()
        assert bool(cli.trainer.optimizers[0].defaults["fused"]) == fused
    return 1000 * statistics.median(timer.steps), 1000 * statistics.median(timer.updates)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--pairs", type=int, default=2, help="fused/loop pairs of fits per recipe")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pretrained", type=Path, default=None, help="the distillation student's encoder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="tokenized data and teacher logits")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "adamw_step.json")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pocketbert-adamw-") as tmp:
        for name in options.recipes:
            config = recipe_config(name, options, Path(tmp))
            runs: dict[str, list[tuple[float, float]]] = {"fused": [], "loop": []}
            for pair in range(options.pairs):
                for fused in ((True, False) if pair % 2 == 0 else (False, True)):
                    step, update = fit_once(config, fused, options.warmup)
                    runs["fused" if fused else "loop"].append((step, update))
                    print(f"{name} {'fused' if fused else 'loop'}: {step:.1f} ms/step, clip + update {update:.1f} ms",
                          flush=True)
            summary = {arm: {"ms_per_step": statistics.median(s for s, _ in values),
                             "ms_clip_update": statistics.median(u for _, u in values), "runs": values}
                       for arm, values in runs.items()}
            summary["step_speedup"] = summary["loop"]["ms_per_step"] / summary["fused"]["ms_per_step"]
            results[name] = summary
    lines = ["| recipe | ms/step fused | ms/step loop | speed-up | clip + update fused | clip + update loop |",
             "|---|---|---|---|---|---|"]
    for name, s in results.items():
        fused, loop = s["fused"], s["loop"]
        lines.append(f"| {name} | {fused['ms_per_step']:.1f} | {loop['ms_per_step']:.1f} | {s['step_speedup']:.2f}x | "
                     f"{fused['ms_clip_update']:.1f} | {loop['ms_clip_update']:.1f} |")
    print("\n".join(lines))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps({"torch": torch.__version__, "threads": 1, "clock": "cpu",
                                       "settings": {k: str(v) for k, v in vars(options).items()},
                                       "recipes": results}, indent=2) + "\n")
    print(f"wrote {options.out}")
    return results


if __name__ == "__main__":
    main()
