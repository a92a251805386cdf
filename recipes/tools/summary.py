"""``python -m recipes summary RUN_DIR...``: one table of a pipeline's runs (pretraining, teacher, student, exports).

Reads what the runs wrote (``test_metrics.json``, ``teachers.json``, ``export/benchmark.json``) and prints every
model's test figures side by side with the linear baseline fitted on the same training split; writes the table as
Markdown and JSON when ``--out`` is given (``make quickstart`` writes ``tb_logs/quickstart_summary.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from export.files import write_json, write_text
from lightning_modules.errors import PocketbertError
from recipes.tools.parser import run_path

COLUMNS = [("model", "model"), ("accuracy", "test acc"), ("macro_f1", "macro-F1"), ("size_mb", "size MB"),
           ("p50_ms", "p50 ms"), ("lead", "vs baseline (pts)")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes summary",
                                     description="One table of a pipeline's runs: pretraining, teacher(s), student and "
                                                 "every exported variant, beside the linear baseline.")
    parser.add_argument("runs", nargs="+", type=run_path,
                        help="run folders in pipeline order (e.g. tb_logs/NAME/latest)")
    parser.add_argument("--out", type=run_path, help="write the table to OUT.md and OUT.json")
    return parser


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise PocketbertError(f"{path} is not valid JSON ({err.msg}); rerun the recipe that wrote it") from None


def run_name(run: Path) -> str:
    config = yaml.safe_load((run / "config.yaml").read_text("utf-8")) if (run / "config.yaml").is_file() else None
    logger = ((config or {}).get("trainer") or {}).get("logger") or {}
    name = (logger.get("init_args") or {}).get("name") if isinstance(logger, dict) else None
    return str(name or run.resolve().name)


def rows_of(run: Path) -> list[dict[str, Any]]:
    """The rows one run contributes: its test figures, its teachers, its exported variants and the baseline."""
    if not run.is_dir():
        raise PocketbertError(f"run folder {run} not found; pass run folders such as tb_logs/news16_cpu/latest")
    name = run_name(run)
    metrics = read_json(run / "test_metrics.json")
    if metrics is None:
        raise PocketbertError(f"{run} has no test_metrics.json: the run did not finish (rerun its recipe)")
    rows: list[dict[str, Any]] = []
    if "test_acc" not in metrics:
        held_out = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        return [{"model": f"{name} (pretraining: {held_out})"}]
    teachers = read_json(run / "teachers.json")
    for member in (teachers or {}).get("teachers", []):
        rows.append({"model": f"{name}'s teacher: {member['teacher']}", "accuracy": member.get("test_acc")})
    if teachers and len(teachers["teachers"]) > 1:
        rows.append({"model": f"{name}'s teacher ensemble (weighted)",
                     "accuracy": teachers["ensemble"].get("test_acc")})
    benchmark = read_json(run / "export" / "benchmark.json")
    if benchmark is None:
        rows.append({"model": name, "accuracy": metrics["test_acc"], "macro_f1": metrics.get("test_macro_f1")})
        return rows
    for variant in benchmark["variants"]:
        if "accuracy" not in variant:
            continue
        label = "linear baseline" if variant["variant"] == "baseline" else f"{name} {variant['variant']}"
        if variant["variant"] == benchmark.get("shipped"):
            label += " (shipped)"
        rows.append({"model": label, "accuracy": variant["accuracy"], "macro_f1": variant.get("macro_f1"),
                     "size_mb": variant.get("size_mb"), "p50_ms": variant.get("p50_ms"),
                     "baseline": variant["variant"] == "baseline"})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    baseline = next((row["accuracy"] for row in rows if row.get("baseline")), None)
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if baseline is not None and row.get("accuracy") is not None and not row.get("baseline"):
            row["lead"] = 100 * (row["accuracy"] - baseline)
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            cells.append("-" if value is None else f"{value:+.2f}" if key == "lead" else
                         f"{value:.4f}" if key in ("accuracy", "macro_f1") else
                         f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = [row for run in args.runs for row in rows_of(run)]
    # the baseline once, last: every student run with exports measured it on the same split
    baselines = [row for row in rows if row.get("baseline")]
    rows = [row for row in rows if not row.get("baseline")] + baselines[-1:]
    text = table(rows)
    print(f"\n{text}\n", flush=True)
    if args.out is not None:
        write_text(args.out.with_suffix(".md"), f"# Pipeline summary\n\nRuns: {', '.join(map(str, args.runs))}\n\n"
                                                f"{text}\n")
        write_json(args.out.with_suffix(".json"), {"runs": [str(run) for run in args.runs], "rows": rows})
        print(f"summary written to {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")
    return 0
