"""``python -m recipes drift --baseline RUN_DIR --predictions FILE``: has the predicted-class mix drifted?

Compares a batch of the model's predictions from the field with the bundle's ``monitoring_baseline.json`` (the
golden-set predicted-class distribution) by PSI and KL divergence; see :mod:`export.monitoring` and
docs/personalization.md for the thresholds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from export.files import write_json
from export.monitoring import SEVERITY, DriftThresholds, drift_check
from lightning_modules.errors import PocketbertError
from recipes.tools.parser import run_path

BASELINE = "monitoring_baseline.json"
COLUMNS = ("prediction", "predicted", "label")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipes drift",
        description="Population stability index and KL divergence between new predictions and the export bundle's "
                    "baseline (golden-set predicted-class distribution).")
    parser.add_argument("--baseline", required=True, type=run_path,
                        help=f"a run folder, its export/ folder, or a {BASELINE} file")
    parser.add_argument("--predictions", required=True, type=run_path,
                        help="predicted labels (names or class ids): .txt one per line, .json list, or .csv/.jsonl "
                             f"with a {'/'.join(COLUMNS)} column (what classify and predict write)")
    parser.add_argument("--json", type=run_path, help="also write the report here")
    parser.add_argument("--fail-on", choices=["never", "moderate", "significant"], default="never",
                        help="exit with status 1 at this drift level or worse, when the check is reliable (enough "
                        "predictions) or, on fewer predictions, the shift is significant (chi-square p < 0.01; "
                        "default: %(default)s)")
    for name, value in vars(DriftThresholds()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None,
                            help=f"threshold override (default: the baseline's, normally {value})")
    return parser


def baseline_file(path: Path) -> Path:
    for candidate in (path, path / BASELINE, path / "export" / BASELINE):
        if candidate.is_file():
            return candidate
    raise PocketbertError(f"no {BASELINE} at {path}; pass a run folder exported with AppAssets, its export/ folder "
                          "or the file itself")


def read_predictions(path: Path) -> list[Any]:
    if not path.is_file():
        raise PocketbertError(f"predictions file {path} not found")
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as err:
        raise PocketbertError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            values = json.loads(text)
            if not isinstance(values, list):
                raise PocketbertError(f"{path} must hold a JSON list of predicted labels")
            return values
        # split on "\n" only, and let csv see the line breaks: texts in a predictions file may hold U+2028 or a
        # quoted line break, which str.splitlines() would cut rows at
        if suffix == ".jsonl":
            return [_column(json.loads(line), path) for line in text.split("\n") if line.strip()]
        if suffix == ".csv":
            return [_column(row, path) for row in csv.DictReader(io.StringIO(text, newline=""))]
    except json.JSONDecodeError as err:
        raise PocketbertError(f"{path} is not valid JSON: {err}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _column(row: Any, path: Path) -> Any:
    for name in COLUMNS:
        if isinstance(row, dict) and name in row:
            return row[name]
    raise PocketbertError(f"{path}: a row has none of the columns {', '.join(COLUMNS)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = baseline_file(args.baseline)
    baseline = json.loads(path.read_text("utf-8"))
    overrides = {name: getattr(args, name) for name in vars(DriftThresholds()) if getattr(args, name) is not None}
    thresholds = DriftThresholds(**{**baseline.get("thresholds", {}), **overrides})
    report = drift_check(baseline, read_predictions(args.predictions), thresholds)
    report["baseline"] = str(path)
    print(f"{report['predictions']} predictions vs baseline {path} ({baseline['predictions']} golden predictions)")
    print(f"PSI {report['psi']:.4f} ({report['psi_status']}; moderate >= {thresholds.psi_moderate}, significant >= "
          f"{thresholds.psi_significant}), noise floor ~{report['psi_noise_floor']:.4f}")
    print(f"KL(new || baseline) {report['kl']:.4f} ({report['kl_status']}; moderate >= {thresholds.kl_moderate}, "
          f"significant >= {thresholds.kl_significant})")
    top = sorted(report["per_class"], key=lambda row: -abs(row["psi_term"]))[:5]
    print("largest shifts: " + ", ".join(f"{row['label']} {row['baseline']:.3f}->{row['new']:.3f}" for row in top))
    if "warning" in report:
        print(f"warning: {report['warning']}")
    test = f"chi-square p={report['p_value']:.2g}"
    if report["reliable"]:
        note = ""
    elif report["significant"]:
        note = f" (few predictions, but the shift is significant: {test})"
    else:
        note = f" (unreliable: too few predictions; the shift is not significant: {test})"
    print(f"drift: {report['status']}{note}")
    if args.json is not None:
        write_json(args.json, report)
    # On too few predictions noise alone can reach the thresholds: only a significant shift fails the job then.
    failing = (args.fail_on != "never" and report["gate"]
               and SEVERITY[report["status"]] >= SEVERITY[args.fail_on])
    return 1 if failing else 0
