"""benchmarks/train_throughput.py on a tiny configuration: what it reports is consistent (no timing thresholds)."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lightning_modules.training import build_adamw
from tests.conftest import REPO

HIDDEN, FEED_FORWARD, CLASSES = 32, 64, 4
TINY = ["--model.init_args.architecture.num_layers", "1", "--model.init_args.architecture.hidden_size", str(HIDDEN),
        "--model.init_args.architecture.num_heads", "2",
        "--model.init_args.architecture.intermediate_size", str(FEED_FORWARD)]
ROUNDS, STEPS, BATCH = 2, 3, 8


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "benchmarks" / "train_throughput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def training_flops(width: int) -> int:
    """Matmul FLOPs of one row through the tiny n-gram BERT, forward + backward (backward is twice forward)."""
    forward = (2 * width * (4 * HIDDEN**2 + 2 * HIDDEN * FEED_FORWARD)  # Q, K, V, output; feed-forward in and out
               + 4 * width**2 * HIDDEN  # attention scores and their weighted sum
               + 2 * HIDDEN**2  # mean-pooler dense
               + 2 * (2 * HIDDEN) * CLASSES)  # classifier over the pooled features + the bag of bigrams
    # BertModel also runs its [CLS] pooler, whose output the mean pooling replaces: forward only (no gradient)
    return 3 * forward + 2 * HIDDEN**2


def test_benchmark_json_is_consistent(tmp_path: Path) -> None:
    bench = load_benchmark()
    threads_before = torch.get_num_threads()
    out = tmp_path / "train_throughput.json"
    summary = bench.main(["--warmup", "2", "--steps", str(STEPS), "--rounds", str(ROUNDS), "--cache-dir",
                          str(tmp_path / "cache"), "--out", str(out), "--",
                          "--data.init_args.labels", "[sports,finance,car,game]",
                          "--data.init_args.limit_per_class", "60", "--data.init_args.batch_size", str(BATCH),
                          "--trainer.log_every_n_steps", "2", *TINY])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["clock"] == "cpu" and saved["threads"] == 1
    assert torch.get_num_threads() == threads_before  # restored for the tests that run after this one
    model = saved["models"][0]
    rows = {row["variant"]: row for row in model["rows"]}
    assert list(rows) == ["fit", "plain", "plain_adamw_loop", "plain_random", "plain_fixed"]
    assert saved["fit_vs_plain_loop"] == model["fit_vs_plain_loop"]
    assert saved["useful_tokens_vs_fixed_padding"] == model["useful_tokens_vs_fixed_padding"]

    timed = ROUNDS * STEPS * BATCH
    for row in rows.values():
        assert row["samples"] == timed and len(row["cpu_seconds"]) == ROUNDS
        assert row["useful_tokens"] <= row["padded_tokens"]
        per_round = [STEPS * BATCH / seconds for seconds in row["cpu_seconds"]]
        assert row["samples_per_s_rounds"] == pytest.approx(per_round)
        assert row["samples_per_s"] == pytest.approx(statistics.median(per_round))
        assert row["gflops_useful"] <= row["gflops_executed"] + 1e-12
        assert row["pct_peak_useful"] == pytest.approx(100 * row["gflops_useful"] / model["matmul_peak_gflops"])
    # equal batches: the fit and the plain loops over the DataModule's loader trained on exactly the same rows
    for key in ("useful_tokens", "padded_tokens"):
        assert rows["fit"][key] == rows["plain"][key] == rows["plain_adamw_loop"][key]
    assert rows["plain_fixed"]["padded_tokens"] == timed * 40
    # length-grouped batches carry less padding than random ones (headlines: 22 +- 5 tokens)
    assert rows["fit"]["padded_tokens"] < rows["plain_random"]["padded_tokens"]
    assert rows["fit"]["padded_tokens"] < 1.1 * rows["fit"]["useful_tokens"]

    for key, (top, bottom, rate) in bench.RATIOS.items():
        quotients = [a / b for a, b in zip(rows[top][rate + "_rounds"], rows[bottom][rate + "_rounds"], strict=True)]
        assert model[key + "_rounds"] == pytest.approx(quotients)
        assert model[key] == pytest.approx(statistics.median(quotients))

    flops = {int(width): count for width, count in model["flops_per_row"].items()}
    assert 40 in flops and {width: training_flops(width) for width in flops} == flops


def test_fused_adamw_matches_the_default_update() -> None:
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(50, 16)), torch.nn.Parameter(torch.randn(16))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    initial = [w.detach().clone() for w in weights]
    fused = build_adamw([("weight", weights[0]), ("bias", weights[1])], 1e-2, 0.1)
    default = build_adamw([("weight", copies[0]), ("bias", copies[1])], 1e-2, 0.1, fused=False)
    assert fused.defaults["fused"] is True and not default.defaults["fused"]
    assert [group["weight_decay"] for group in fused.param_groups] == [0.1, 0.0]  # no decay on biases
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for params, optimizer in ((weights, fused), (copies, default)):
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
    for a, b, start in zip(weights, copies, initial, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (a - start).abs().mean() > 5e-3  # three steps of lr 1e-2 moved the values
