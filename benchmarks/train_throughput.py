"""Training throughput: our LightningModule + Trainer against a plain PyTorch loop, side by side in one run.

Builds the model, data, batch size and optimizer of a classifier recipe (default ``recipes/configs/news16_cpu.yaml``)
through the CLI (``run=False``: exactly what the recipe trains) and fits it with the recipe's Trainer (its callbacks,
logger and progress output; validation off, ``max_steps`` set). A callback interleaves plain PyTorch loops with that
fit: after ``--warmup`` untimed steps of every variant, each round times ``--steps`` Lightning steps, then ``--steps``
steps of each plain variant, each training its own copy of the same initial model. Variants:

- ``fit``: the recipe's Trainer; length-grouped batches padded to their longest row (the DataModule's loader);
- ``plain``: a plain loop (forward, cross-entropy, backward, clipping, AdamW, scheduler) over the *same batches* in
  the same order, with the same optimizer: ``fit / plain`` is what Lightning costs;
- ``plain_adamw_loop``: the same, with torch's default CPU AdamW (a Python loop over the parameters; the recipes'
  optimizer before the fused kernel);
- ``plain_random``: random batches padded to their longest row (``length_grouping: false``);
- ``plain_fixed``: random batches padded (and cut) to ``--fixed-length`` tokens, the usual fixed-shape loop.

Rates are medians over the rounds; a ratio is the median over the rounds of that round's quotient (machines here are
shared: alternating rounds let load changes hit every variant alike, and a round's variants run seconds apart). With
one thread (the default) time is this process's CPU time, which other jobs on a shared machine barely stretch
(``--clock wall`` for elapsed time; the default with more threads). FLOPs are matrix-multiply FLOPs of forward +
backward counted by ``torch.utils.flop_counter`` per sequence width ("executed": every padded position; "useful":
each row at its own length); the peak is the best of three 1024x1024 fp32 matmuls, taken every round on the same
threads and clock.

    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/train_throughput.py
    NEWS_DATA_DIR=../shared/data .venv/bin/python benchmarks/train_throughput.py --models recipe bert_4x256

``--models bert_4x256`` adds the issue's older teacher shape (4 layers, 256 hidden, no n-grams, batch 32). Arguments
after ``--`` go to the CLI (e.g. ``-- --data.init_args.limit_per_class 100``). Prints a Markdown table per model and
writes ``benchmarks/results/train_throughput.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_modules import NewsDataModule, TextClassifier  # noqa: E402
from lightning_modules.batching import PadCollator, ResumableSampler  # noqa: E402
from lightning_modules.training import build_adamw  # noqa: E402
from recipes.cli import PocketbertCLI  # noqa: E402

# CLI overrides per model. bert_4x256: the news16 teacher (a plain BERT, [CLS] pooling, batch 32).
MODELS: dict[str, list[str]] = {
    "recipe": [],
    "bert_4x256": [  # one JSON value: a dotted `ngram_orders null` does not parse as None
        "--model.init_args.architecture", '{"num_layers": 4, "hidden_size": 256, "num_heads": 4, '
        '"intermediate_size": 1024, "ngram_orders": null, "pooling": "cls", "ngram_bag": false}',
        "--data.init_args.batch_size", "32",
    ],
}
VARIANTS = ("fit", "plain", "plain_adamw_loop", "plain_random", "plain_fixed")
MATMUL_SIZE = 1024


@dataclass
class Segment:
    """One timed stretch of steps of one variant: its seconds, and every batch's padded width and row lengths."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time
    widths: list[int] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)

    def record(self, batch: dict[str, torch.Tensor]) -> None:
        self.widths.append(int(batch["input_ids"].shape[1]))
        self.lengths.append(batch["attention_mask"].sum(dim=1).tolist())

    @property
    def samples(self) -> int:
        return sum(len(rows) for rows in self.lengths)

    @property
    def useful_tokens(self) -> int:
        return sum(sum(rows) for rows in self.lengths)

    @property
    def padded_tokens(self) -> int:
        return sum(width * len(rows) for width, rows in zip(self.widths, self.lengths, strict=True))


class Stopwatch:
    """Wall-clock and process CPU time since it was made."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, segment: Segment) -> None:
        segment.wall_seconds = time.perf_counter() - self.wall
        segment.cpu_seconds = time.process_time() - self.cpu


class FixedPadCollator:
    """Pads (and cuts) every batch to ``length`` tokens: the fixed-shape batches of a plain loop."""

    def __init__(self, pad_token_id: int, length: int) -> None:
        self.pad = PadCollator(pad_token_id)
        self.pad_token_id = pad_token_id
        self.length = length

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad(rows)
        extra = self.length - batch["input_ids"].shape[1]
        for key, value in (("input_ids", self.pad_token_id), ("attention_mask", 0)):
            batch[key] = F.pad(batch[key], (0, extra), value=value) if extra > 0 else batch[key][:, : self.length]
        return batch


class PlainLoop:
    """A plain PyTorch training loop over its own copy of the model, stepped ``steps`` at a time."""

    def __init__(self, model: PreTrainedModel, loader: DataLoader[dict[str, Any]], hparams: dict[str, Any],
                 total_steps: int, clip: float | None, fused: bool) -> None:
        self.model = model.train()
        self.batches: Iterator[dict[str, torch.Tensor]] = iter(loader)
        self.optimizer = build_adamw(list(model.named_parameters()), hparams["learning_rate"],
                                     hparams["weight_decay"], fused=fused)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(hparams["warmup_ratio"] * total_steps), total_steps)
        self.clip = clip

    def run(self, steps: int, segment: Segment | None = None) -> None:
        start = Stopwatch()
        for _ in range(steps):
            batch = next(self.batches)
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = F.cross_entropy(logits.float(), batch["labels"])
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if segment is not None:
                segment.record(batch)
        if segment is not None:
            start.stop(segment)


def matmul_gflops(threads: int) -> dict[str, float]:
    """Best of three fp32 square matmuls in GFLOP/s, on either clock: what the matrix kernels reach right now."""
    torch.set_num_threads(threads)
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    best = {"wall": float("inf"), "cpu": float("inf")}
    for _ in range(3):
        timed = Segment()
        stopwatch = Stopwatch()
        torch.mm(a, b)
        stopwatch.stop(timed)
        best = {"wall": min(best["wall"], timed.wall_seconds), "cpu": min(best["cpu"], timed.cpu_seconds)}
    return {clock: 2 * MATMUL_SIZE**3 / max(seconds, 1e-9) / 1e9 for clock, seconds in best.items()}


class Interleaver(L.Callback):
    """Times the fit in segments of ``steps`` and runs every plain loop for as many steps after each.

    ``plain`` (the same batches) always runs right after the fit, so that the ratio that measures Lightning compares
    neighbours in time; the other loops take turns going first."""

    def __init__(self, loops: dict[str, PlainLoop], warmup: int, steps: int, rounds: int, threads: int,
                 clock: str) -> None:
        self.loops, self.warmup, self.steps, self.rounds = loops, warmup, steps, rounds
        self.threads, self.clock = threads, clock
        self.segments: dict[str, list[Segment]] = {name: [] for name in ("fit", *loops)}
        self.peaks: list[dict[str, float]] = []
        self.loads: list[float] = []
        self._current = Segment()
        self._stopwatch = Stopwatch()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = batch_idx + 1
        if step <= self.warmup:
            if step == self.warmup:
                for loop in self.loops.values():
                    loop.run(self.warmup)
                self._restart()
            return
        self._current.record(batch)
        if (step - self.warmup) % self.steps:
            return
        self._stopwatch.stop(self._current)
        self.segments["fit"].append(self._current)
        round_index = len(self.segments["fit"]) - 1
        others = [name for name in self.loops if name != "plain"]
        turn = round_index % max(1, len(others))
        for name in [*(["plain"] if "plain" in self.loops else []), *others[turn:], *others[:turn]]:
            segment = Segment()
            self.loops[name].run(self.steps, segment)
            self.segments[name].append(segment)
        self.peaks.append(matmul_gflops(self.threads))
        self.loads.append(os.getloadavg()[0])
        print(f"  round {round_index + 1}/{self.rounds} ({self.clock} clock): " + ", ".join(
            f"{name} {segments[-1].samples / seconds(segments[-1], self.clock):.0f}"
            for name, segments in self.segments.items())
              + f" samples/s; matmul {self.peaks[-1][self.clock]:.0f} GFLOP/s; load {self.loads[-1]:.1f}", flush=True)
        self._restart()

    def _restart(self) -> None:
        self._current = Segment()
        self._stopwatch = Stopwatch()


def seconds(segment: Segment, clock: str) -> float:
    return max(segment.cpu_seconds if clock == "cpu" else segment.wall_seconds, 1e-9)


def flops_per_row(model: PreTrainedModel, widths: set[int]) -> dict[int, int]:
    """Matrix-multiply FLOPs of forward + backward of one row of each width (a batch's are linear in its rows)."""
    model = copy.deepcopy(model).train()
    counts: dict[int, int] = {}
    for width in sorted(widths):
        ids = torch.full((1, width), 100, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
        counts[width] = counter.get_total_flops()
    return counts


RATES: dict[str, Callable[[Segment], float]] = {
    "samples_per_s": lambda s: s.samples,
    "useful_tokens_per_s": lambda s: s.useful_tokens,
    "padded_tokens_per_s": lambda s: s.padded_tokens,
}
# name: (numerator variant, denominator variant, rate); each is the median over rounds of the round's quotient
RATIOS: dict[str, tuple[str, str, str]] = {
    "fit_vs_plain_loop": ("fit", "plain", "samples_per_s"),
    "useful_tokens_vs_fixed_padding": ("fit", "plain_fixed", "useful_tokens_per_s"),
    "useful_tokens_vs_random_batches": ("fit", "plain_random", "useful_tokens_per_s"),
    "fused_adamw_vs_loop": ("plain", "plain_adamw_loop", "samples_per_s"),
}


def summarize(name: str, segments: list[Segment], flops: dict[int, int], peak: float, clock: str) -> dict[str, Any]:
    def executed(segment: Segment) -> float:
        return sum(flops[w] * len(rows) for w, rows in zip(segment.widths, segment.lengths, strict=True))

    def useful(segment: Segment) -> float:
        return sum(flops[length] for rows in segment.lengths for length in rows)

    rates = {**RATES, "gflops_executed": lambda s: executed(s) / 1e9, "gflops_useful": lambda s: useful(s) / 1e9}
    row: dict[str, Any] = {"variant": name}
    for key, amount in rates.items():
        row[key] = statistics.median(amount(segment) / seconds(segment, clock) for segment in segments)
        row[key + "_rounds"] = [amount(segment) / seconds(segment, clock) for segment in segments]
    row["ms_per_step"] = 1000 * statistics.median(seconds(s, clock) / len(s.widths) for s in segments)
    row["pct_peak_executed"] = 100 * row["gflops_executed"] / peak
    row["pct_peak_useful"] = 100 * row["gflops_useful"] / peak
    row["samples"] = sum(s.samples for s in segments)
    row["useful_tokens"] = sum(s.useful_tokens for s in segments)
    row["padded_tokens"] = sum(s.padded_tokens for s in segments)
    row["wall_seconds"] = [s.wall_seconds for s in segments]
    row["cpu_seconds"] = [s.cpu_seconds for s in segments]
    return row


def bench_model(name: str, options: argparse.Namespace, save_dir: Path) -> dict[str, Any]:
    steps_needed = options.warmup + options.rounds * options.steps
    args = ["--config", options.config, *MODELS[name], "--trainer.limit_val_batches", "0",
            "--trainer.max_steps", str(steps_needed), "--trainer.logger.init_args.save_dir", str(save_dir)]
    if options.cache_dir is not None:
        args += ["--data.init_args.cache_dir", str(options.cache_dir)]
    cli = PocketbertCLI(args=[*args, *options.cli_args], run=False)
    module, data = cli.model, cli.datamodule
    if not isinstance(module, TextClassifier) or not isinstance(data, NewsDataModule):
        raise SystemExit(f"error: {options.config} must train a TextClassifier on a NewsDataModule (the plain loop "
                         "trains with cross-entropy)")
    data.setup("fit")
    if len(data.train_dataloader()) < steps_needed:
        raise SystemExit(f"error: {len(data.train_dataloader())} batches per epoch, fewer than --warmup + --rounds x "
                         f"--steps = {steps_needed}; lower them")
    dataset, pad = data.datasets["train"], int(data.tokenizer.pad_token_id or 0)

    def random_batches(collate: Callable[..., dict[str, torch.Tensor]]) -> DataLoader[dict[str, Any]]:
        sampler = ResumableSampler(len(dataset), data.split_seed)  # plain shuffling, as length_grouping: false
        return DataLoader(dataset, batch_size=data.batch_size, sampler=sampler, collate_fn=collate)

    def loop(loader: DataLoader[dict[str, Any]], fused: bool = True) -> PlainLoop:
        return PlainLoop(copy.deepcopy(module.model), loader, dict(module.hparams), steps_needed,
                         cli.trainer.gradient_clip_val, fused)

    # the DataModule's own loader: the sampler's seed and epoch are the fit's, so these are the fit's batches in order
    makers: dict[str, Callable[[], PlainLoop]] = {
        "plain": lambda: loop(data.train_dataloader()),
        "plain_adamw_loop": lambda: loop(data.train_dataloader(), fused=False),
        "plain_random": lambda: loop(random_batches(PadCollator(pad))),
        "plain_fixed": lambda: loop(random_batches(FixedPadCollator(pad, options.fixed_length))),
    }
    loops = {key: make() for key, make in makers.items() if key in options.variants}
    initial_model = copy.deepcopy(module.model)
    interleaver = Interleaver(loops, options.warmup, options.steps, options.rounds, options.threads, options.clock)
    cli.trainer.callbacks.append(interleaver)
    parameters = sum(p.numel() for p in module.model.parameters())
    print(f"{name}: {parameters / 1e6:.2f}M parameters, batch {data.batch_size}, "
          f"{len(data.train_dataloader())} batches/epoch; {options.rounds} rounds of {options.steps} steps after "
          f"{options.warmup} warm-up steps; {options.threads} thread(s)", flush=True)
    cli.trainer.fit(module, datamodule=data)

    segments = interleaver.segments
    widths = {w for segs in segments.values() for s in segs for w in s.widths}
    widths |= {length for segs in segments.values() for s in segs for rows in s.lengths for length in rows}
    flops = flops_per_row(initial_model, widths)
    peak = statistics.median(p[options.clock] for p in interleaver.peaks)
    rows = [summarize(variant, segments[variant], flops, peak, options.clock)
            for variant in VARIANTS if variant in segments]
    by_name = {row["variant"]: row for row in rows}
    ratios: dict[str, Any] = {}
    for key, (top, bottom, rate) in RATIOS.items():
        if top in by_name and bottom in by_name:
            per_round = [a / b for a, b in zip(by_name[top][rate + "_rounds"], by_name[bottom][rate + "_rounds"],
                                               strict=True)]
            ratios[key], ratios[key + "_rounds"] = statistics.median(per_round), per_round
    return {"model": name, "config": options.config, "cli_overrides": [*MODELS[name], *options.cli_args],
            "parameters": parameters, "batch_size": data.batch_size, "clock": options.clock,
            "batches_per_epoch": len(data.train_dataloader()), "matmul_peak_gflops": peak,
            "matmul_peak_gflops_rounds": interleaver.peaks, "load_average_rounds": interleaver.loads,
            "flops_per_row": {str(w): f for w, f in flops.items()}, "rows": rows, **ratios}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['model']} ({result['parameters'] / 1e6:.2f}M parameters, batch {result['batch_size']}, "
             f"{result['clock']} clock); matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s", "",
             "| variant | samples/s | useful tokens/s | padded tokens/s | ms/step | GFLOP/s executed | GFLOP/s useful "
             "| useful % of peak |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['samples_per_s']:.0f} | {row['useful_tokens_per_s']:.0f} | "
                     f"{row['padded_tokens_per_s']:.0f} | {row['ms_per_step']:.1f} | {row['gflops_executed']:.1f} | "
                     f"{row['gflops_useful']:.1f} | {row['pct_peak_useful']:.0f}% |")
    ratios = [f"{key} {result[key]:.2f}x" for key in RATIOS if key in result]
    return "\n".join([*lines, "", "median of the rounds' ratios: " + "; ".join(ratios)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    cli_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="news16_cpu.yaml", help="a TextClassifier recipe")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["recipe"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS[1:], default=list(VARIANTS[1:]),
                        help="plain loops to run beside the fit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="cpu: this process's CPU time (the default with 1 thread: other jobs on a shared machine "
                             "stretch wall time, not this); wall: elapsed time (the default with more threads)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of every variant first")
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--fixed-length", type=int, default=40, help="padded length of the plain_fixed loop")
    parser.add_argument("--cache-dir", type=Path, default=None, help="tokenized-data cache (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_throughput.json")
    options = parser.parse_args(argv)
    options.cli_args = cli_args
    options.clock = options.clock or ("cpu" if options.threads == 1 else "wall")
    if min(options.threads, options.warmup, options.steps, options.rounds) < 1:
        raise SystemExit("error: --threads, --warmup, --steps and --rounds must be at least 1")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    # validation is off (training throughput only), so the recipe's checkpoint callback has no metric to watch
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="pocketbert-throughput-") as tmp:
            for name in options.models:
                result = bench_model(name, options, Path(tmp))
                results.append(result)
                print(table(result), flush=True)
    finally:
        torch.set_num_threads(threads_before)  # main() also runs inside other processes (the tests)
    first = results[0]
    summary = {
        "fit_vs_plain_loop": first.get("fit_vs_plain_loop"),
        "useful_tokens_vs_fixed_padding": first.get("useful_tokens_vs_fixed_padding"),
        "torch": torch.__version__, "threads": options.threads, "clock": options.clock, "cpu_count": os.cpu_count(),
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(options).items()},
        "models": results,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    partial = options.out.with_suffix(".json.tmp")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    partial.replace(options.out)
    print(f"wrote {options.out}")
    return summary


if __name__ == "__main__":
    main()
