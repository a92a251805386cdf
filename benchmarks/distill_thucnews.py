"""Does distillation pay on THUCNews-10? The same student trained alone and distilled, with the same budget.

Trains (or takes, with ``--teacher``) the offline THUCNews-10 teacher of ``recipes/thucnews10_cpu.yaml``, then the
student of ``recipes/thucnews10_distill_cpu.yaml`` (a) alone, with cross-entropy (``TextClassifier``), and (b)
distilled from the teacher (``DistillationModule``) with the same shape, initial weights, optimizer, schedule and
epochs; (b) keeps the full vocabulary so that only the loss differs, and (c) the recipe's default, distilled with a
pruned vocabulary, is reported beside it. Every model is tested on the official test split. Then it times, side by
side and interleaved over several rounds, a plain student epoch, a distillation epoch that runs the teacher on
every batch and one that reads its cached logits. Prints a Markdown table and writes JSON.

    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/distill_thucnews.py \
        --teacher tb_logs/thucnews10_cpu/latest/best.ckpt

Data, shapes and hyperparameters come from the two recipes, so the benchmark measures what the recipes ship.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_modules import DistillationModule, EncoderSpec, NewsDataModule, TextClassifier  # noqa: E402
from lightning_modules.metrics import ClassificationMetrics  # noqa: E402
from lightning_modules.teacher_cache import cached_teacher_logits, load_teacher, run_teacher  # noqa: E402
from lightning_modules.token_cache import tokenize  # noqa: E402

RECIPES = REPO / "recipes"
TRAINER_KEYS = ("precision", "gradient_clip_val")


def recipe(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((RECIPES / name).read_text("utf-8"))
    return loaded


class EpochTimer(L.Callback):
    """Wall time of each training epoch (validation included when it runs; setup and the teacher cache are not);
    with a ``name``, a progress line per epoch (progress bars are off when the output is not a terminal)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        if self.name is not None:
            f1 = trainer.callback_metrics.get("val_macro_f1", float("nan"))
            print(f"{self.name} epoch {trainer.current_epoch}: {self.seconds[-1]:.0f} s, val macro-F1 {float(f1):.4f}",
                  flush=True)


def make_trainer(out: Path, epochs: int, trainer_args: dict[str, Any], callbacks: list[L.Callback],
                 **overrides: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, default_root_dir=out,
                     callbacks=callbacks, enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False,
                     **{k: trainer_args[k] for k in TRAINER_KEYS if k in trainer_args}, **overrides)


def fit_and_test(name: str, model: L.LightningModule, dm: NewsDataModule, out: Path, epochs: int,
                 trainer_args: dict[str, Any]) -> dict[str, Any]:
    """Train, keep the best epoch by validation macro-F1, test it."""
    shutil.rmtree(out / name, ignore_errors=True)  # a rerun must not test an older run's best.ckpt
    checkpoint = ModelCheckpoint(dirpath=out / name, monitor="val_macro_f1", mode="max", filename="best")
    timer = EpochTimer(name)
    trainer = make_trainer(out, epochs, trainer_args, [checkpoint, timer])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - start
    metrics = trainer.test(model, datamodule=dm, ckpt_path=checkpoint.best_model_path, verbose=False)[0]
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    state = best["state_dict"]
    result = {
        "test_acc": float(metrics["test_acc"]),
        "test_macro_f1": float(metrics["test_macro_f1"]),
        "shipped_params": sum(v.numel() for k, v in state.items() if k.startswith("model.")),
        "vocab_size": len(best["pocketbert"]["vocab"]),
        "epochs": epochs,
        "epoch_s_with_validation": [round(s, 1) for s in timer.seconds],
        "fit_s": round(fit_s, 1),
        "checkpoint": checkpoint.best_model_path,
    }
    print(f"{name}: test acc {result['test_acc']:.4f}  macro-F1 {result['test_macro_f1']:.4f}  "
          f"({fit_s / 60:.1f} min)", flush=True)
    return result


def evaluate_teacher(path: Path, dm: NewsDataModule) -> dict[str, Any]:
    """Test metrics of any pocketbert checkpoint, through its own vocabulary (as it would ship)."""
    teacher = load_teacher(path)
    if teacher.label_names != dm.label_names:
        raise SystemExit(f"the teacher {path} has labels {teacher.label_names}, the data {dm.label_names}")
    tokens = tokenize(dm.texts["test"], teacher.tokenizer, teacher.max_length, dm.cache_dir)
    logits = run_teacher(teacher, tokens, device=torch.device("cpu"), desc="teacher on test")
    metrics = ClassificationMetrics(len(teacher.label_names))
    metrics.update(logits, dm.datasets["test"].labels)
    values = metrics.compute()
    config = teacher.model.config
    return {"test_acc": float(values["acc"]), "test_macro_f1": float(values["macro_f1"]),
            "shipped_params": sum(p.numel() for p in teacher.model.parameters()), "checkpoint": str(path),
            "shape": f"{config.num_hidden_layers}L-{config.hidden_size}H, vocab {config.vocab_size}"}


def time_epochs(make: dict[str, Any], dm: NewsDataModule, out: Path, batches: int, rounds: int,
                trainer_args: dict[str, Any]) -> dict[str, list[float]]:
    """Seconds per training batch of each mode, interleaved round by round (the order rotating, so that no mode
    always runs first or last) after an untimed warm-up round."""
    seconds: dict[str, list[float]] = {name: [] for name in make}
    names = list(make)
    for round_index in range(rounds + 1):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            build = make[name]
            timer = EpochTimer()
            trainer = make_trainer(out, 1, trainer_args, [timer], limit_train_batches=batches if round_index else 10,
                                   limit_val_batches=0, enable_checkpointing=False)
            L.seed_everything(0)
            trainer.fit(build(), datamodule=dm)
            if round_index:  # round 0 warms up caches, allocator and threads
                seconds[name].append(timer.seconds[0] / batches)
                print(f"timing round {round_index} {name}: {1000 * seconds[name][-1]:.1f} ms/batch", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, help="teacher checkpoint (default: train one as thucnews10_cpu.yaml)")
    parser.add_argument("--teacher-epochs", type=int, default=3, help="epochs when training the teacher here")
    parser.add_argument("--epochs", type=int, default=3, help="student epochs, the same for every student")
    parser.add_argument("--limit-per-class", type=int, help="rows per class of train, dev and test (quick runs)")
    parser.add_argument("--timing-batches", type=int, default=100, help="training batches per timed epoch")
    parser.add_argument("--timing-rounds", type=int, default=5, help="interleaved timing rounds (after a warm-up)")
    parser.add_argument("--no-pruned", action="store_true", help="skip the distilled student with a pruned vocab")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distill_thucnews.json")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if not os.environ.get("NEWS_DATA_DIR"):
        parser.error("set NEWS_DATA_DIR=/path/to/shared/data")
    load_start = os.getloadavg()
    work = args.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)

    distill_recipe, teacher_recipe = recipe("thucnews10_distill_cpu.yaml"), recipe("thucnews10_cpu.yaml")
    trainer_args = distill_recipe["trainer"]
    data_args = {**distill_recipe["data"]["init_args"], "limit_per_class": args.limit_per_class}
    dm = NewsDataModule(**data_args)
    dm.setup()
    student_args: dict[str, Any] = dict(distill_recipe["model"]["init_args"])
    spec = EncoderSpec(**student_args.pop("architecture"))
    del student_args["teacher_checkpoint"]
    shared: dict[str, Any] = {"label_names": dm.label_names, "tokenizer": dm.tokenizer_path,
                              "max_length": dm.max_length}
    plain_keys = ("dropout", "learning_rate", "weight_decay", "warmup_ratio")
    plain_args: dict[str, Any] = {k: student_args[k] for k in plain_keys}

    teacher_path = args.teacher
    if teacher_path is None:
        L.seed_everything(args.seed)
        teacher_args: dict[str, Any] = dict(teacher_recipe["model"]["init_args"])
        teacher_args["architecture"] = EncoderSpec(**teacher_args["architecture"])
        trained = fit_and_test("teacher", TextClassifier(**shared, **teacher_args), dm, work, args.teacher_epochs,
                               teacher_recipe["trainer"])
        teacher_path = Path(trained["checkpoint"])
    results: dict[str, Any] = {"teacher": evaluate_teacher(teacher_path, dm)}
    start = time.perf_counter()
    teacher = load_teacher(teacher_path)
    tokens = tokenize(dm.texts["train"], teacher.tokenizer, teacher.max_length, dm.cache_dir)
    _, from_cache = cached_teacher_logits(teacher, dm.texts["train"], tokens, dm.cache_dir, device=torch.device("cpu"))
    results["teacher"]["logit_cache_build_s"] = None if from_cache else round(time.perf_counter() - start, 1)

    def plain() -> L.LightningModule:
        return TextClassifier(**shared, architecture=spec, **plain_args)

    def distilled(teacher_cache: bool = True, prune_vocab: bool = False) -> L.LightningModule:
        options = {**student_args, "teacher_cache": teacher_cache, "prune_vocab": prune_vocab}
        return DistillationModule(teacher_checkpoint=teacher_path, **shared, architecture=spec, **options)

    L.seed_everything(args.seed)
    results["student_alone"] = fit_and_test("student_alone", plain(), dm, work, args.epochs, trainer_args)
    L.seed_everything(args.seed)
    results["student_distilled"] = fit_and_test("student_distilled", distilled(), dm, work, args.epochs, trainer_args)
    if not args.no_pruned:
        L.seed_everything(args.seed)
        results["student_distilled_pruned"] = fit_and_test("student_distilled_pruned", distilled(prune_vocab=True),
                                                           dm, work, args.epochs, trainer_args)

    per_batch = time_epochs({"plain": plain, "distill_no_cache": lambda: distilled(teacher_cache=False),
                             "distill_cache": distilled}, dm, work, args.timing_batches, args.timing_rounds,
                            trainer_args)
    batches_per_epoch = -(-len(dm.datasets["train"]) // dm.batch_size)
    # Medians over rounds: a round disturbed by other work on the machine does not move them.
    epoch_s = {name: statistics.median(values) * batches_per_epoch for name, values in per_batch.items()}
    results["epoch_time"] = {
        "plain_s": round(epoch_s["plain"], 1),
        "distill_no_cache_s": round(epoch_s["distill_no_cache"], 1),
        "distill_cache_s": round(epoch_s["distill_cache"], 1),
        "ratio_no_cache": round(epoch_s["distill_no_cache"] / epoch_s["plain"], 3),
        "ratio_cache": round(epoch_s["distill_cache"] / epoch_s["plain"], 3),
        "ms_per_batch": {name: [round(1000 * v, 1) for v in values] for name, values in per_batch.items()},
        "batches_per_epoch": batches_per_epoch,
        "timed_batches": args.timing_batches,
        "rounds": args.timing_rounds,
    }
    results["setup"] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "train_rows": len(dm.datasets["train"]), "dev_rows": len(dm.datasets["val"]),
        "test_rows": len(dm.datasets["test"]), "student": vars(spec), "epochs": args.epochs,
        "alpha": student_args["alpha"], "temperature": student_args["temperature"],
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_avg_start": [round(v, 2) for v in load_start], "load_avg_end": [round(v, 2) for v in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(args.out)
    print(table(results))
    print(f"\nwrote {args.out}")
    return 0


def table(results: dict[str, Any]) -> str:
    rows = [(f"teacher ({results['teacher']['shape']})", "teacher"), ("student alone (cross-entropy)", "student_alone"),
            ("student distilled (same shape)", "student_distilled"),
            ("student distilled, pruned vocab", "student_distilled_pruned")]
    lines = ["| model | test acc | test macro-F1 | shipped params |", "|---|---:|---:|---:|"]
    for label, key in rows:
        if key in results:
            r = results[key]
            lines.append(f"| {label} | {r['test_acc']:.4f} | {r['test_macro_f1']:.4f} | "
                         f"{r['shipped_params'] / 1e6:.2f}M |")
    t = results["epoch_time"]
    lines += ["", "| training epoch (student, side by side) | seconds | vs plain |", "|---|---:|---:|",
              f"| plain student | {t['plain_s']:.0f} | 1.00x |",
              f"| distillation, teacher on every batch (no cache) | {t['distill_no_cache_s']:.0f} | "
              f"{t['ratio_no_cache']:.2f}x |",
              f"| distillation, cached teacher logits | {t['distill_cache_s']:.0f} | {t['ratio_cache']:.2f}x |"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
