"""Fit-end benchmark of every exported variant, with size/accuracy/latency budgets that fail the run."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from callbacks.context import export_context
from export import (
    BENCHMARKED_FORMATS,
    Budgets,
    ExportContext,
    ExportError,
    ProfileSettings,
    TimingSettings,
    read_manifest,
    write_benchmark,
)


class ExportBenchmark(Callback):
    """At fit end, benchmark every model in ``<log_dir>/export/manifest.json``; list it after the exporters.

    Per variant: file size, parameters, CPU latency p50/p95 at batch 1, throughput at batch 32, test accuracy,
    macro-F1 and agreement with PyTorch fp32 (Core ML: size only on Linux). Writes ``benchmark.json`` and
    ``benchmark.md``, logs the figures to TensorBoard under ``export/`` and prints the table. With ``profile``, also
    ``profile.json``/``profile.md``: time by layer kind (embeddings, attention, FFN, pooler + classifier) of PyTorch
    fp32 (``torch.profiler``) and of the ONNX files (ONNX Runtime's node profile) at each of ``profile_lengths``, and
    which kind dominates. A broken budget fails the run with a one-line error after the reports are written.

    Args:
        threads: CPU threads for every runtime (fixed, so variants compare fairly).
        latency_length: Tokens per batch-1 latency call; defaults to the model's max length (the Core ML input).
        warmup: Untimed calls before timing.
        repeats: Timed calls (latency) and timed batches (throughput).
        throughput_batch: Rows per throughput batch (real test rows padded to the batch's longest).
        budgets: Limits on size (MB), accuracy drop (points vs PyTorch fp32) and p50 latency (ms).
        profile: Also write the per-layer profile (same threads, warm-up and repeats as the timing).
        profile_lengths: Batch-1 input lengths the profile runs at (those above the model's max length are skipped).
    """

    def __init__(self, threads: int = 1, latency_length: int | None = None, warmup: int = 5, repeats: int = 30,
                 throughput_batch: int = 32, budgets: Budgets | None = None, profile: bool = True,
                 profile_lengths: list[int] | None = None) -> None:
        if threads < 1 or warmup < 0 or repeats < 1 or throughput_batch < 1:
            raise ExportError("ExportBenchmark needs threads >= 1, warmup >= 0, repeats >= 1 and throughput_batch >= 1")
        if latency_length is not None and latency_length < 3:
            raise ExportError(f"ExportBenchmark latency_length must be at least 3, got {latency_length}")
        if profile_lengths is not None and (not profile_lengths or min(profile_lengths) < 3):
            raise ExportError(f"ExportBenchmark profile_lengths must list lengths of at least 3, got {profile_lengths}")
        self.budgets = budgets or Budgets()
        self.profile = ProfileSettings(lengths=list(profile_lengths or [32, 128]), warmup=warmup, repeats=repeats,
                                       threads=threads) if profile else None
        for field in ("max_size_mb", "max_accuracy_drop", "max_p50_ms"):
            value = getattr(self.budgets, field)
            if value is not None and value < 0:
                raise ExportError(f"ExportBenchmark budgets.{field} must be 0 or more, got {value}")
        self.threads, self.latency_length, self.warmup = threads, latency_length, warmup
        self.repeats, self.throughput_batch = repeats, throughput_batch

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            self.export(export_context(trainer, pl_module))

    def export(self, context: ExportContext) -> None:
        artifacts = read_manifest(context.export_dir)["artifacts"]
        if not any(entry["format"] in BENCHMARKED_FORMATS for entry in artifacts.values()):
            raise ExportError(f"ExportBenchmark found no exported model in {context.export_dir / 'manifest.json'}; "
                              "list PyTorchExport, OnnxExport or CoreMLExport before it in trainer.callbacks")
        unknown = sorted(set(self.budgets.variants or []) - set(artifacts))
        if unknown:
            raise ExportError(f"ExportBenchmark budgets.variants names {unknown}, which were not exported; "
                              f"exported: {sorted(artifacts)}")
        timing = TimingSettings(threads=self.threads, latency_length=min(self.latency_length or 10**9,
                                                                         context.shipped.max_length),
                                warmup=self.warmup, repeats=self.repeats, throughput_batch=self.throughput_batch)
        write_benchmark(context, timing, self.budgets, self.profile)
