"""The quality ladder: what each lever adds, side by side on the same split, with the linear baseline beside it.

Every rung is a run of the shipped recipes through ``python -m recipes fit`` with a few fields changed (so the
benchmark measures what ships), tested on the same test split; seeds change the model's initialization and data order
(``seed_everything``), never the split. Rungs:

1. the linear baseline: TF-IDF character 1-2-grams + LinearSVC (scikit-learn), fitted on the training split;
2. the student's transformer from scratch, cross-entropy only (``<data>_cpu.yaml`` without n-grams);
3. + hashed bigram embeddings;
4. + mean pooling and the bag of bigrams beside the transformer (``<data>_cpu.yaml`` as shipped);
5. + a bigram vocabulary instead of hash buckets (the pretraining recipe's ``ngram_vocabulary``);
6. + the cross-fitted linear teacher (``<data>_distill_cpu.yaml`` from scratch, the pretraining recipe's shape);
7. + masked-LM pretraining (``<data>_pretrain_cpu.yaml`` then ``<data>_distill_cpu.yaml``: the shipped pipeline), with
   its exported ONNX INT8 file's accuracy;
8. when the distillation recipe turns ``linear_companion`` on, rung 7 runs without it and this rung is the shipped
   pipeline: + the linear companion (an NB-SVM in the student's graph);
9. when ``<data>_born_again_cpu.yaml`` exists (THUCNews-10), the shipped pipeline's last stage: a second round whose
   teacher adds rung 8's student (its ``CheckpointTeacher`` pointed at that run's ``best.ckpt``) to the linear ones.

    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/quality_ladder.py --data news16 --seeds 42 --final-seeds 43

``--final-seeds`` adds seeds to the last two rungs only (the ones that decide what ships). A rerun into the same
``--out`` reuses every finished run whose config is unchanged, so seeds can be added later.

Prints a Markdown table (mean and every seed) and writes JSON to ``benchmarks/results/quality_<data>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export.baseline import baseline_row  # noqa: E402
from lightning_modules import NewsDataModule  # noqa: E402
from lightning_modules.runs import resolve_run_path  # noqa: E402

RECIPES = REPO / "recipes" / "configs"
EXPORT_CALLBACKS = "callbacks."


def recipe(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((RECIPES / f"{name}.yaml").read_text("utf-8"))
    return loaded


def without_exports(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    callbacks = config["trainer"].get("callbacks") or []
    config["trainer"]["callbacks"] = [c for c in callbacks if not c["class_path"].startswith(EXPORT_CALLBACKS)]
    return config


def run(config: dict[str, Any], name: str, seed: int, out: Path) -> Path:
    """Fit ``config`` as run ``name`` with ``seed``; returns its run folder."""
    config = copy.deepcopy(config)
    config["seed_everything"] = seed
    config["trainer"]["enable_progress_bar"] = False
    config["trainer"]["logger"]["init_args"].update(save_dir=str(out / "tb_logs"), name=f"{name}_seed{seed}")
    path = out / "configs" / f"{name}_seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False)
    pointer = out / "tb_logs" / f"{name}_seed{seed}" / "latest"
    if path.exists() and path.read_text("utf-8") == text and pointer.exists():
        finished = resolve_run_path(pointer)
        if (finished / "test_metrics.json").exists():  # a rerun adds seeds cheaply
            print(f"  {name} seed {seed}: reused {finished} (same config)", flush=True)
            return finished
    path.write_text(text, "utf-8")
    start = time.perf_counter()
    log = out / "logs" / f"{name}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, "-m", "recipes", "fit", "--config", str(path)], cwd=REPO,
                              stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"{name} (seed {seed}) failed; see {log}")
    print(f"  {name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return resolve_run_path(out / "tb_logs" / f"{name}_seed{seed}" / "latest")  # the run folder `latest` names


def test_accuracy(run_dir: Path) -> float:
    return float(json.loads((run_dir / "test_metrics.json").read_text())["test_acc"])


def baseline_data(data: dict[str, Any]) -> NewsDataModule:
    """The DataModule of a recipe's ``data`` block, without its augmentation: the baseline is fitted on the original
    training texts (``texts["train"]`` never holds augmented copies; augmenting them would only cost time)."""
    return NewsDataModule(**{k: v for k, v in data["init_args"].items() if k != "augmentation"})


def linear_baseline(dm: NewsDataModule) -> dict[str, Any]:
    """The linear baseline row (:func:`export.baseline.baseline_row`): fitted on ``dm``'s training split, scored on
    its test split, the splits every rung's run trains and tests on."""
    dm.setup()
    labels = {split: dm.datasets[split].labels.tolist() for split in ("train", "test")}
    return baseline_row(dm.texts["train"], labels["train"], dm.texts["test"], labels["test"], len(dm.label_names))


def ladder(data: str, seeds: list[int], final_seeds: list[int], out: Path) -> list[dict[str, Any]]:
    classifier, pretrain, student = recipe(f"{data}_cpu"), recipe(f"{data}_pretrain_cpu"), recipe(f"{data}_distill_cpu")
    baseline = linear_baseline(baseline_data(classifier["data"]))
    rows: list[dict[str, Any]] = [{"rung": f"linear baseline: {baseline['model']}", "accuracy": [baseline["accuracy"]],
                                   "seeds": ["-"]}]

    def architecture(config: dict[str, Any], **changes: Any) -> dict[str, Any]:
        config = without_exports(config)
        config["model"]["init_args"]["architecture"].update(changes)
        return config

    scratch = architecture(classifier, ngram_orders=None, pooling="cls", ngram_bag=False)
    bigram = architecture(classifier, pooling="cls", ngram_bag=False)
    shipped_classifier = without_exports(classifier)
    vocabulary = architecture(classifier, ngram_vocabulary=pretrain["model"]["init_args"]["architecture"]
                              .get("ngram_vocabulary", 0))
    companion = bool(student["model"]["init_args"].get("linear_companion", False))
    distilled = without_exports(student)
    distilled["model"]["init_args"].pop("pretrained")
    distilled["model"]["init_args"]["linear_companion"] = False  # a rung of its own, after pretraining
    distilled["model"]["init_args"]["architecture"] = pretrain["model"]["init_args"]["architecture"]
    second = recipe(f"{data}_born_again_cpu") if (RECIPES / f"{data}_born_again_cpu.yaml").is_file() else None
    teachers = " + ".join(t["class_path"].rsplit(".", 1)[-1] for t in student["model"]["init_args"]["teachers"])
    rungs = [("transformer from scratch, cross-entropy", "scratch", scratch),
             ("+ hashed bigram embeddings", "bigram", bigram),
             ("+ mean pooling and a bag of bigrams", "pooling", shipped_classifier),
             ("+ a bigram vocabulary (the most frequent training bigrams a row each)", "vocabulary", vocabulary),
             (f"+ cross-fitted linear teachers ({teachers})", "teacher", distilled)]
    for title, name, config in rungs:
        print(f"{title}:", flush=True)
        rung_seeds = seeds + final_seeds if name == "teacher" else seeds
        accuracies = [test_accuracy(run(config, f"{data}_{name}", seed, out)) for seed in rung_seeds]
        rows.append({"rung": title, "accuracy": accuracies, "seeds": rung_seeds})
    print("+ masked-LM pretraining" + (", then the linear companion" if companion else "")
          + (", then a second round" if second else "") + " (the shipped pipeline):", flush=True)
    pretrained, shipped, second_round, int8 = [], [], [], []
    for seed in seeds + final_seeds:
        encoder = run(pretrain, f"{data}_pretrain", seed, out) / "pretrained"
        config = copy.deepcopy(student)
        config["model"]["init_args"]["pretrained"] = str(encoder)
        if companion:
            plain = without_exports(config)
            plain["model"]["init_args"]["linear_companion"] = False
            pretrained.append(test_accuracy(run(plain, f"{data}_pretrained", seed, out)))
        run_dir = run(config, f"{data}_shipped", seed, out)
        shipped.append(test_accuracy(run_dir))
        if second is not None:
            second_config = copy.deepcopy(second)
            second_config["model"]["init_args"]["pretrained"] = str(encoder)
            for teacher in second_config["model"]["init_args"]["teachers"]:
                if teacher["class_path"].endswith(".CheckpointTeacher"):
                    teacher["init_args"]["checkpoint"] = str(run_dir / "best.ckpt")  # the first round's student
            run_dir = run(second_config, f"{data}_second_round", seed, out)
            second_round.append(test_accuracy(run_dir))
        benchmark = json.loads((run_dir / "export" / "benchmark.json").read_text())
        int8.append(next(row["accuracy"] for row in benchmark["variants"] if row["variant"] == "onnx_int8"))
    if companion:
        rows.append({"rung": "+ masked-LM pretraining", "accuracy": pretrained, "seeds": seeds + final_seeds})
    first_round = "+ the linear companion" if companion else "+ masked-LM pretraining"
    rows.append({"rung": f"{first_round}{'' if second else ' (shipped recipes)'}, PyTorch", "accuracy": shipped,
                 "seeds": seeds + final_seeds})
    if second is not None:
        title = "+ a second round: the first student beside the linear teachers (shipped recipes), PyTorch"
        rows.append({"rung": title, "accuracy": second_round, "seeds": seeds + final_seeds})
    rows.append({"rung": "  the shipped ONNX INT8 file", "accuracy": int8, "seeds": seeds + final_seeds})
    for row in rows:
        row["mean"] = statistics.mean(row["accuracy"])
        row["vs_baseline_points"] = 100 * (row["mean"] - baseline["accuracy"])
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| rung | test accuracy (mean) | vs baseline (pts) | per seed |", "|---|---|---|---|"]
    for row in rows:
        per_seed = ", ".join(f"{seed}: {acc:.4f}" for seed, acc in zip(row["seeds"], row["accuracy"], strict=True))
        lines.append(f"| {row['rung']} | {row['mean']:.4f} | {row['vs_baseline_points']:+.2f} | {per_seed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["news16", "thucnews10"], default="news16")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="seeds of every rung")
    parser.add_argument("--final-seeds", type=int, nargs="*", default=[],
                        help="more seeds for the last two rungs (linear teacher, shipped pipeline)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    work = args.out / f"ladder_{args.data}"
    start = time.perf_counter()
    rows = ladder(args.data, args.seeds, args.final_seeds, work)
    text = markdown(rows)
    print(f"\n{text}\n\n({(time.perf_counter() - start) / 60:.0f} min)")
    result = {"data": args.data, "seeds": args.seeds, "final_seeds": args.final_seeds, "rows": rows,
              "minutes": (time.perf_counter() - start) / 60}
    (args.out / f"quality_{args.data}.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
