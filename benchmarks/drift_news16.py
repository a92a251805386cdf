"""Drift check on a trained run: does PSI/KL stay quiet without drift and fire on a real shift?

Predicts the run's validation split with the exported head (the model's own predictions, no drift: the test set
the baseline came from and the validation split share one distribution), then checks three batches against the
bundle's ``monitoring_baseline.json``:

* ``all validation``: every validation prediction (expected: stable);
* ``100 validation``: 100 of them at random (expected: flagged unreliable, too few predictions);
* ``surge``: 2,000 predictions, half drawn from the sports, finance and entertainment items (expected: drift).

Prints a Markdown table and writes JSON::

    NEWS_DATA_DIR=../shared/data python benchmarks/drift_news16.py --run tb_logs/news16_distill_cpu/latest
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export.coreml import load_spec  # noqa: E402
from export.files import read_manifest, write_json  # noqa: E402
from export.monitoring import drift_check  # noqa: E402
from export.personalization import pooled_features, predict, read_head_update  # noqa: E402
from lightning_modules.checkpoints import load_exportable, split_examples  # noqa: E402
from recipes.tools.config import instantiate, read_config  # noqa: E402
from recipes.tools.parser import run_path  # noqa: E402

SURGE = ("sports", "finance", "entertainment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=run_path, default=str(REPO / "tb_logs" / "news16_distill_cpu" / "latest"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "drift_news16.json")
    args = parser.parse_args()
    export_dir = args.run / "export"
    manifest = read_manifest(export_dir)
    exportable = load_exportable(manifest["source_checkpoint"])
    head = read_head_update(load_spec(export_dir / manifest["artifacts"]["coreml_head"]["path"]))
    datamodule, _ = instantiate(read_config(str(args.run / "config.yaml")))
    val = split_examples(datamodule, "val", exportable)
    predicted = predict(head.weight, head.bias, pooled_features(exportable.model, val))
    labels = np.asarray(val.labels)
    rng = np.random.default_rng(args.seed)
    surge = np.flatnonzero(np.isin(labels, [exportable.label_names.index(name) for name in SURGE]))
    batches = {
        "all validation": predicted,
        "100 validation": predicted[rng.choice(len(predicted), 100, replace=False)],
        "surge": predicted[np.concatenate([rng.choice(surge, 1000), rng.choice(len(predicted), 1000)])],
    }
    baseline = json.loads((export_dir / "monitoring_baseline.json").read_text("utf-8"))
    rows = []
    print("| batch | predictions | PSI | KL | noise floor | status | reliable |\n|---|---|---|---|---|---|---|")
    for name, batch in batches.items():
        report = drift_check(baseline, batch.tolist())
        rows.append({"batch": name, **{k: v for k, v in report.items() if k != "per_class"}})
        print(f"| {name} | {report['predictions']} | {report['psi']:.4f} | {report['kl']:.4f} | "
              f"{report['psi_noise_floor']:.4f} | {report['status']} | {report['reliable']} |")
    write_json(args.out, {"run": str(args.run), "seed": args.seed, "surge_classes": list(SURGE), "batches": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
