"""Training-text augmentation (``lightning_modules.EdaAugmentation``): test accuracy with and without it, side by side.

Each pair is two fits of a shipped recipe through ``python -m recipes fit`` (exports stripped: the number that
matters is test accuracy), identical but for ``data.init_args.augmentation``, with the same seed and split. Rungs:

- ``ce``: ``<data>_cpu.yaml``, the student's shape from scratch with cross-entropy alone (no teacher);
- ``distill``: ``<data>_distill_cpu.yaml`` from scratch (no masked-LM pretraining: the quality ladder's "linear
  teacher" rung, which scores within seed noise of the pretrained student), with the cross-fitted linear teacher.

Augmented copies keep their original's label and teacher logits. By default both arms train the same number of epochs,
so an augmented run takes ``1 + copies`` times the steps; ``--equal-steps`` gives the augmented arm
``max_epochs / (1 + copies)`` epochs instead (the same steps and compute). ``--max-epochs`` overrides the recipes'
epochs (THUCNews-10's take 4 minutes an epoch on 2 cores).

    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/augmentation.py --data news16 --rungs distill ce
    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/augmentation.py --data news16 --max-epochs 2 --equal-steps
    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/augmentation.py --data thucnews10 --rungs distill \
        --max-epochs 2

Prints a Markdown table and writes JSON to
``benchmarks/results/augmentation_<data>_e<epochs>[_equal_steps].json``; a rerun reuses every finished fit whose config
is unchanged. The table's first row is the linear baseline (TF-IDF character 1-2-grams + LinearSVC, as in
``quality_ladder.py``), fitted once on the rungs' original training split (no augmented copies) and scored on the same
test split; each rung shows by how many points it leads or trails it, without and with augmentation.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality_ladder import baseline_data, linear_baseline, recipe, run, without_exports  # noqa: E402

from export.baseline import lead_cell, lead_points  # noqa: E402


def augmented(config: dict[str, Any], copies: int, operations: list[str] | None, rate: float) -> dict[str, Any]:
    config = copy.deepcopy(config)
    init_args: dict[str, Any] = {"copies": copies, "rate": rate, "seed": 0}
    if operations:
        init_args["operations"] = operations
    config["data"]["init_args"]["augmentation"] = {"class_path": "lightning_modules.EdaAugmentation",
                                                   "init_args": init_args}
    return config


def rung_config(data: str, rung: str, max_epochs: int | None) -> dict[str, Any]:
    if rung == "ce":
        config = without_exports(recipe(f"{data}_cpu"))
    else:
        config = without_exports(recipe(f"{data}_distill_cpu"))
        config["model"]["init_args"].pop("pretrained")  # from scratch: the pretraining stage is not needed
        config["model"]["init_args"]["architecture"] = recipe(f"{data}_pretrain_cpu")["model"]["init_args"][
            "architecture"]
    if max_epochs is not None:
        config["trainer"]["max_epochs"] = max_epochs
    return config


def metrics(run_dir: Path) -> dict[str, float]:
    stored = json.loads((run_dir / "test_metrics.json").read_text())
    return {"accuracy": float(stored["test_acc"]), "macro_f1": float(stored["test_macro_f1"])}


def rung_row(rung: str, epochs: tuple[int, int], plain: dict[str, float], aug: dict[str, float],
             baseline: dict[str, Any]) -> dict[str, Any]:
    """A rung's figures: :func:`metrics` without / with augmentation (trained ``epochs`` epochs), the gain, and the
    lead of each over the linear ``baseline`` row, in accuracy points."""
    return {"rung": rung, "epochs": epochs[0], "aug_epochs": epochs[1], "without": plain, "with": aug,
            "gain_points": 100 * (aug["accuracy"] - plain["accuracy"]), "baseline": baseline,
            "vs_baseline_points": {arm: lead_points(figures["accuracy"], baseline)
                                   for arm, figures in (("without", plain), ("with", aug))}}


def distinct_baselines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows' baselines, each once (one, unless the rungs' recipes read different data)."""
    return list({json.dumps(row["baseline"], sort_keys=True): row["baseline"] for row in rows}.values())


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: the linear baseline's row (:func:`distinct_baselines`), then a row per rung with its gain from
    augmentation and its lead over the baseline without / with it."""
    lines = ["| rung | epochs without / with | accuracy without | with | gain (pts) | vs baseline without / with (pts) "
             "| macro-F1 without | with |", "|---|---|---|---|---|---|---|---|"]
    for baseline in distinct_baselines(rows):
        # fitted on the original texts: its figures go under "without"
        lines.append(f"| linear baseline: {baseline['model']} ({baseline['train_examples']:,} training texts) | - | "
                     f"{baseline['accuracy']:.4f} | - | - | - | {baseline['macro_f1']:.4f} | - |")
    for row in rows:
        lead = row["vs_baseline_points"]
        lines.append(f"| {row['rung']} | {row['epochs']} / {row['aug_epochs']} | {row['without']['accuracy']:.4f} | "
                     f"{row['with']['accuracy']:.4f} | {row['gain_points']:+.2f} | {lead_cell(lead['without'])} / "
                     f"{lead_cell(lead['with'])} | {row['without']['macro_f1']:.4f} | {row['with']['macro_f1']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["news16", "thucnews10"], default="news16")
    parser.add_argument("--rungs", nargs="+", choices=["distill", "ce"], default=["distill", "ce"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--copies", type=int, default=1, help="augmented copies per training row")
    parser.add_argument("--operations", nargs="*", choices=["synonym", "delete", "swap", "insert"], default=None,
                        help="EDA operations (default: all four)")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--max-epochs", type=int, default=None, help="override the recipes' epochs (both arms)")
    parser.add_argument("--equal-steps", action="store_true",
                        help="train the augmented arm max_epochs / (1 + copies) epochs: the same optimizer steps")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    work = args.out / f"augmentation_{args.data}"
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    tag = f"x{args.copies}_{'-'.join(args.operations or ['all'])}_r{args.rate}"
    baselines: dict[str, dict[str, Any]] = {}  # one fit per distinct data block: the rungs' recipes share theirs
    for rung in args.rungs:
        base = rung_config(args.data, rung, args.max_epochs)
        dm = baseline_data(base["data"])
        # the resolved arguments (defaults filled in), so that a recipe spelling out a default shares the fit
        key = json.dumps({**dm.hparams, "tokenizer": dm.tokenizer_spec}, sort_keys=True, default=str)
        if key not in baselines:
            baselines[key] = linear_baseline(dm)
        baseline = baselines[key]
        epochs = base["trainer"]["max_epochs"]
        name = f"{args.data}_{rung}_e{epochs}"
        print(f"{rung}:", flush=True)
        plain = metrics(run(base, name, args.seed, work))
        aug_config = augmented(base, args.copies, args.operations, args.rate)
        aug_epochs = max(1, round(epochs / (1 + args.copies))) if args.equal_steps else epochs
        aug_config["trainer"]["max_epochs"] = aug_epochs
        aug = metrics(run(aug_config, f"{name}_aug{tag}_e{aug_epochs}", args.seed, work))
        rows.append(rung_row(rung, (epochs, aug_epochs), plain, aug, baseline))
    minutes = (time.perf_counter() - start) / 60
    print(f"\naugmentation: EDA {tag}, seed {args.seed}\n{markdown(rows)}\n\n({minutes:.0f} min)")
    result = {"data": args.data, "seed": args.seed, "copies": args.copies, "operations": args.operations,
              "rate": args.rate, "baselines": distinct_baselines(rows), "rows": rows, "minutes": minutes}
    args.out.mkdir(parents=True, exist_ok=True)
    schedule = f"e{args.max_epochs or 'recipe'}{'_equal_steps' if args.equal_steps else ''}"
    (args.out / f"augmentation_{args.data}_{schedule}.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
