"""``python -m recipes personalize --run RUN_DIR``: rehearse the on-device head update on simulated users.

Reads the updatable head the run exported (``export/<name>Head.mlmodel``: weights, loss, SGD learning rate,
mini-batch size, momentum, epochs, shuffle), the run's checkpoint (the encoder) and its ``config.yaml`` (the data).
Users are drawn from the validation split (held out from training), the golden set is the test split (the one the
export bundle's monitoring baseline and golden check come from). An update is rejected by the rule the app runs:
``personalization.json``'s golden-check examples against its fp32 reference accuracy (the test split's drop is
reported beside it). See docs/personalization.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from export import EvalSet, read_manifest
from export.assets import build_tokenizer
from export.coreml import load_spec
from export.files import write_json, write_text
from export.personalization import (
    GoldenCheck,
    HeadUpdate,
    UserSimulation,
    compare_learning_rates,
    markdown_report,
    pooled_features,
    read_head_update,
    rehearse,
)
from lightning_modules.checkpoints import ExportableModel, load_exportable, split_examples
from lightning_modules.errors import PocketbertError
from recipes.tools.config import instantiate, read_config
from recipes.tools.parser import run_path

DEFAULTS = UserSimulation()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipes personalize",
        description="Replay the Core ML updatable head's on-device update (MLUpdateTask) in PyTorch for simulated "
                    "users and report per-user accuracy before/after, forgetting on the golden set, and which updates "
                    "to reject.")
    parser.add_argument("--run", required=True, type=run_path, help="a run folder with export/ (e.g. "
                        "tb_logs/news16_distill_cpu/latest)")
    parser.add_argument("--ckpt", type=run_path, help="checkpoint the bundle was exported from (default: the "
                        "manifest's source_checkpoint, else RUN/best.ckpt)")
    parser.add_argument("--config", help="config whose data: section gives the splits (default: RUN/config.yaml)")
    parser.add_argument("--out", type=run_path, help="report folder (default: RUN/personalization)")
    parser.add_argument("--users", type=int, default=DEFAULTS.users, help="simulated users (default: %(default)s)")
    parser.add_argument("--feedback", type=int, default=DEFAULTS.feedback,
                        help="labelled items per user that train the head (default: %(default)s)")
    parser.add_argument("--later-items", type=int, default=DEFAULTS.later_items,
                        help="items per user seen after the update, for accuracy (default: %(default)s)")
    parser.add_argument("--interest-classes", type=int, default=DEFAULTS.interest_classes,
                        help="classes each user is interested in (default: %(default)s)")
    parser.add_argument("--interest-share", type=float, default=DEFAULTS.interest_share,
                        help="share of a user's items from their interest classes (default: %(default)s)")
    parser.add_argument("--label-noise", type=float, default=DEFAULTS.label_noise,
                        help="share of feedback labels that are wrong (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="simulation seed (default: %(default)s)")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[],
                        help="also rehearse the same users at these learning rates and tabulate gain vs forgetting")
    parser.add_argument("--max-golden-drop", type=float, help="reject an update whose golden accuracy falls by more "
                        "than this (default: the bundle's, from the recipe's CoreMLExport.updatable_head)")
    return parser


def bundle_head(export_dir: Path, artifacts: dict[str, Any]) -> tuple[HeadUpdate, float, dict[str, Any] | None]:
    """The head update read from the exported head's spec, the bundle's rejection threshold, and its golden check
    (``personalization.json``'s examples and reference accuracy; None when the bundle has no rollback file)."""
    if "coreml_head" not in artifacts:
        raise PocketbertError(f"{export_dir} has no updatable Core ML head (manifest lists no coreml_head); export one "
                              "with CoreMLExport (personalizable: true), e.g. python -m recipes export --ckpt "
                              "RUN/best.ckpt")
    head = read_head_update(load_spec(export_dir / artifacts["coreml_head"]["path"]))
    threshold, check = 0.02, None
    if "personalization" in artifacts:
        bundle = json.loads((export_dir / artifacts["personalization"]["path"]).read_text("utf-8"))
        threshold = float(bundle["rollback"]["max_golden_accuracy_drop"])
        check = bundle["rollback"].get("golden_check")
    return head, threshold, check


def golden_check_of(bundle_check: dict[str, Any] | None, exportable: ExportableModel,
                    progress: Any = iter) -> GoldenCheck | None:
    """The bundle's golden check as the app runs it: its token ids through the encoder, its labels, and the fp32
    accuracy the app compares an updated model with."""
    if not bundle_check or not bundle_check.get("examples"):
        return None
    examples = bundle_check["examples"]
    pad_id = int(build_tokenizer(exportable.vocab, exportable.tokenizer_settings).pad_token_id or 0)
    check_set = EvalSet([list(example["input_ids"]) for example in examples],
                        [int(example["label"]) for example in examples], pad_id)
    return GoldenCheck(pooled_features(exportable.model, check_set, progress=progress),
                       np.asarray(check_set.labels), float(bundle_check["accuracy_before"]))


def check_same_model(head: HeadUpdate, exportable: ExportableModel, checkpoint: Path) -> None:
    """The bundle's head must be the checkpoint's classifier: labels, weight and bias (a head trained further on
    device, or a checkpoint whose head differs only in its bias, would rehearse another model)."""
    classifier: Any = exportable.model.classifier
    weight = classifier.weight.detach().float().numpy()
    bias = (classifier.bias.detach().float().numpy() if classifier.bias is not None
            else np.zeros(weight.shape[0], dtype=np.float32))
    same = (head.labels == exportable.label_names and weight.shape == head.weight.shape
            and bias.shape == head.bias.shape and np.allclose(weight, head.weight, atol=1e-6)
            and np.allclose(bias, head.bias, atol=1e-6))
    if not same:
        raise PocketbertError(f"the exported head does not match {checkpoint} (labels or classifier weights or bias "
                              "differ); pass the checkpoint it was exported from with --ckpt, or re-export")


def log_to_tensorboard(run: Path, report: dict[str, Any], text: str) -> None:
    """Summary means as ``personalization/*`` scalars and the Markdown report as text, in the run's TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run))
    try:
        for key, spread in report["summary"].items():
            writer.add_scalar(f"personalization/{key}", spread["mean"])
        writer.add_scalar("personalization/updates_rejected", report["updates_rejected"])
        writer.add_text("personalization/report", text)
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Path = args.run
    export_dir = run / "export" if (run / "export").is_dir() else run
    if not (export_dir / "manifest.json").is_file():
        raise PocketbertError(f"{run} has no export/manifest.json; pass a run folder whose fit exported artifacts "
                              "(e.g. tb_logs/news16_distill_cpu/latest)")
    manifest = read_manifest(export_dir)
    head, threshold, bundle_check = bundle_head(export_dir, manifest["artifacts"])
    if args.max_golden_drop is not None:
        threshold = args.max_golden_drop
    if not 0 <= threshold <= 1:
        raise PocketbertError(f"--max-golden-drop must be in [0, 1], got {threshold}")
    if any(rate <= 0 for rate in args.learning_rates):
        raise PocketbertError(f"--learning-rates must be positive, got {args.learning_rates}")
    settings = UserSimulation(users=args.users, feedback=args.feedback, later_items=args.later_items,
                              interest_classes=args.interest_classes, interest_share=args.interest_share,
                              label_noise=args.label_noise, seed=args.seed)
    source = manifest.get("source_checkpoint")
    checkpoint: Path = args.ckpt or (Path(source) if source and Path(source).is_file() else run / "best.ckpt")
    if not checkpoint.is_file():
        raise PocketbertError(f"no checkpoint at {checkpoint}; pass the one the bundle was exported from with --ckpt")
    exportable = load_exportable(checkpoint)
    check_same_model(head, exportable, checkpoint)
    datamodule, _ = instantiate(read_config(args.config or str(run / "config.yaml")))
    pool, golden = (split_examples(datamodule, split, exportable) for split in ("val", "test"))
    settings.validate(len(pool), len(head.labels))

    def bar(desc: str, total: int) -> Any:
        return lambda batches: tqdm(batches, desc=desc, total=-(-total // 64), unit="batch")

    pool_features = pooled_features(exportable.model, pool, progress=bar("features: val (users)", len(pool)))
    golden_features = pooled_features(exportable.model, golden, progress=bar("features: test (golden)", len(golden)))
    # the app rejects an update by the bundle's golden check (its examples, its fp32 reference): so does the rehearsal
    check_size = len((bundle_check or {}).get("examples") or [])
    check = golden_check_of(bundle_check, exportable, bar("features: golden check", check_size))
    data = (pool_features, np.asarray(pool.labels), golden_features, np.asarray(golden.labels), settings, threshold)
    report = rehearse(head, *data, golden_check=check)
    report["learning_rate_sweep"] = compare_learning_rates(head, args.learning_rates, *data, golden_check=check)
    report.update(run=str(run), checkpoint=str(checkpoint), pool="validation split", golden="test split")
    out: Path = args.out or run / "personalization"
    text = markdown_report(report)
    write_json(out / "report.json", report)
    write_text(out / "report.md", f"# Personalization rehearsal: {run}\n\n{text}\n")
    if args.out is None and any(run.glob("events.out.tfevents.*")):
        log_to_tensorboard(run, report, text)
    print(f"\n{text}\n\nreport: {out / 'report.json'}, {out / 'report.md'}")
    return 0
