"""Where the shipped model spends its time: a per-layer-kind profile from ``torch.profiler`` and ONNX Runtime.

Two views of one question, "which layer kind dominates?":

- PyTorch fp32 (the export graph, :class:`export.graph.ClassifierGraph`, at batch 1): forward hooks open a
  ``torch.profiler.record_function`` range around the embeddings, each layer's attention block, each whole encoder
  layer and everything after the last layer (pooler + classifier). FFN time is a layer's time minus its attention's;
  "other" is the forward's time outside those ranges (the additive mask, Python between modules).
- ONNX Runtime (``model.int8.onnx``, also ``model.onnx`` when present): ORT's own per-node profile of the optimized
  graph it runs. Each node is put in a kind by the module scope the exporter recorded on the node that produced its
  output (fusions keep the output names); nodes outside any module (the mask, quantize/dequantize and scale nodes
  the INT8 quantizer adds) are charged to the module they feed. "other" is the run's time outside node kernels.

Times are milliseconds per call; profiling adds overhead per op, so the profiled totals sit above the benchmark's
p50 and the shares, not the absolute values, are what to read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.benchmark import time_calls
from export.evaluation import EvalSet
from export.files import write_json, write_text
from export.graph import ClassifierGraph, ShippedModel, prepare
from export.onnx_export import onnx_session

KINDS = ("embeddings", "attention", "ffn", "pooler_classifier", "other")
TITLES = {"embeddings": "embeddings", "attention": "attention", "ffn": "FFN", "pooler_classifier":
          "pooler + classifier", "other": "other"}
LAYER = "pocketbert::layer"
FORWARD = "pocketbert::forward"
_LAYER_SCOPE = re.compile(r"^layers\.\d+")
_ATTENTION_SCOPE = re.compile(r"^layers\.\d+\.attention(\.|$)")
_KINETO_NOISE = re.compile(r"^(USDT|STAGE):.*ActivityProfiler")


@dataclass
class ProfileSettings:
    """What the profile measures.

    Args:
        lengths: Batch-1 input lengths in tokens (a real test row padded to each); lengths above the model's max
            length are dropped.
        warmup: Untimed calls before profiling.
        repeats: Profiled calls per length (times are their mean).
        threads: CPU threads (PyTorch and ONNX Runtime).
        top_ops: Operators listed per profile by their own time.
    """

    lengths: list[int] = field(default_factory=lambda: [32, 128])
    warmup: int = 5
    repeats: int = 20
    threads: int = 1
    top_ops: int = 6


@contextlib.contextmanager
def _kineto_quiet() -> Iterator[None]:
    """torch.profiler's C++ backend (kineto) prints ``USDT: ... profiler_start`` lines to stderr on every start and
    stop, with no switch once torch is loaded; stderr is captured during the block and replayed without them."""
    try:
        fd = 2
        saved = os.dup(fd)
    except OSError:  # no real stderr (an embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not _KINETO_NOISE.match(line)]
            if kept:
                os.write(fd, "".join(kept).encode())


class _Ranges:
    """Forward hooks that open and close ``record_function`` ranges around the export graph's parts."""

    def __init__(self, graph: ClassifierGraph) -> None:
        self.open: list[Any] = []
        self.handles: list[Any] = []
        self._bracket(graph, FORWARD, close_first=True)
        self._bracket(graph.embeddings, "pocketbert::embeddings")
        layers = list(graph.layers)
        for index, layer in enumerate(layers):
            self._bracket(layer, LAYER)
            attention = getattr(layer, "attention", None)
            if isinstance(attention, nn.Module):
                self._bracket(attention, "pocketbert::attention")
            if index == len(layers) - 1:  # everything after the last layer is the pooler + classifier
                self.handles.append(layer.register_forward_hook(lambda *_: self._enter("pocketbert::head")))

    def _enter(self, name: str) -> None:
        scope = torch.profiler.record_function(name)
        scope.__enter__()
        self.open.append(scope)

    def _exit(self) -> None:
        self.open.pop().__exit__(None, None, None)

    def _bracket(self, module: nn.Module, name: str, close_first: bool = False) -> None:
        self.handles.append(module.register_forward_pre_hook(lambda *_: self._enter(name)))

        def close(*_: Any) -> None:
            while close_first and len(self.open) > 1:  # the head range, opened after the last layer
                self._exit()
            self._exit()

        self.handles.append(module.register_forward_hook(close))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def torch_profile(shipped: ShippedModel, ids: np.ndarray, mask: np.ndarray, settings: ProfileSettings
                  ) -> dict[str, Any]:
    """Milliseconds per call by kind (and the top ATen ops by own time) of the fp32 export graph on one input."""
    graph = ClassifierGraph(prepare(shipped.model)).eval()
    inputs = (torch.from_numpy(ids), torch.from_numpy(mask))
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with torch.inference_mode():
            unprofiled = faster_half_ms(lambda: graph(*inputs), settings)
            ranges = _Ranges(graph)
            try:
                with _kineto_quiet(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(settings.repeats):
                        graph(*inputs)
            finally:
                ranges.remove()
    finally:
        torch.set_num_threads(previous)
    calls: dict[float, Counter[str]] = {}  # forward start -> range name -> us
    events = list(prof.events())
    forwards = sorted((e.time_range.start, e.time_range.end) for e in events if e.name == FORWARD)
    for event in events:
        if event.name.startswith("pocketbert::"):
            window = next((w for w in forwards if w[0] <= event.time_range.start <= w[1]), None)
            if window is not None:
                calls.setdefault(window[0], Counter())[event.name] += event.time_range.elapsed_us()
    per_call = []
    for ranges_us in calls.values():
        ms = {name.removeprefix("pocketbert::"): us / 1000 for name, us in ranges_us.items()}
        kinds = {"embeddings": ms.get("embeddings", 0.0), "attention": ms.get("attention", 0.0),
                 "ffn": ms.get("layer", 0.0) - ms.get("attention", 0.0), "pooler_classifier": ms.get("head", 0.0)}
        kinds["other"] = ms["forward"] - sum(kinds.values())
        per_call.append(kinds)
    kinds, forward = quiet_mean(per_call)
    averages = [event for event in prof.key_averages() if event.key.startswith("aten::")]
    ops = sorted(averages, key=lambda e: -e.self_cpu_time_total)
    top = [{"op": e.key, "ms": e.self_cpu_time_total / 1000 / settings.repeats,
            "calls": e.count // settings.repeats} for e in ops[:settings.top_ops]]
    return {"runtime": "pytorch fp32 (torch.profiler)", "total_ms": forward, "unprofiled_ms": unprofiled,
            "kinds_ms": kinds, "top_ops": top}


def faster_half_ms(call: Callable[[], object], settings: ProfileSettings) -> float:
    """Unprofiled ms per call, averaged like the profiles: the mean of the faster half of ``repeats`` calls."""
    times = sorted(time_calls(call, settings.warmup, settings.repeats))
    return float(np.mean(times[:max(1, (len(times) + 1) // 2)])) * 1000


def quiet_mean(per_call: list[dict[str, float]]) -> tuple[dict[str, float], float]:
    """Mean ms by kind over the faster half of the calls (a busy machine's slow calls dropped) and its total."""
    ranked = sorted(per_call, key=lambda kinds: sum(kinds.values()))[:max(1, (len(per_call) + 1) // 2)]
    mean = {kind: float(np.mean([call.get(kind, 0.0) for call in ranked])) for kind in KINDS}
    return mean, sum(mean.values())


def scope_kind(scopes: list[str]) -> str | None:
    """The layer kind of a module scope path (``['', 'layers.0', 'layers.0.attention', ...]``), None outside any."""
    modules = [scope for scope in scopes[:-1] if scope]  # the last entry names the op, not a module
    if any(m == "embeddings" or m.startswith("embeddings.") for m in modules):
        return "embeddings"
    if any(_ATTENTION_SCOPE.match(m) for m in modules):
        return "attention"
    if any(_LAYER_SCOPE.match(m) for m in modules):
        return "ffn"
    if any(m.split(".")[0] in ("pooler", "classifier") for m in modules):
        return "pooler_classifier"
    return None


def onnx_node_kinds(model: Any) -> dict[str, str]:
    """Kind of every node of an ONNX graph, from the ``pkg.torch.onnx.name_scopes`` the exporter records; nodes
    without a module (glue, quantizer-added nodes) take the kind of the first classified node downstream, else
    upstream, else ``other``."""
    nodes = list(model.graph.node)
    kinds: dict[str, str | None] = {}
    for node in nodes:
        meta = {prop.key: prop.value for prop in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        kinds[node.name] = scope_kind(json.loads(scopes.replace("'", '"'))) if scopes else None
    consumers: dict[str, list[str]] = defaultdict(list)
    producer: dict[str, str] = {}
    for node in nodes:
        for name in node.input:
            consumers[name].append(node.name)
        for name in node.output:
            producer[name] = node.name
    by_name = {node.name: node for node in nodes}

    def search(start: str, downstream: bool) -> str | None:
        queue, seen = deque([start]), {start}
        while queue:
            node = by_name[queue.popleft()]
            if node.name != start and kinds.get(node.name):
                return kinds[node.name]
            following = ([c for out in node.output for c in consumers.get(out, [])] if downstream else
                         [producer[i] for i in node.input if i in producer])
            for name in following:
                if name not in seen:
                    seen.add(name)
                    queue.append(name)
        return None

    return {node.name: kinds[node.name] or search(node.name, True) or search(node.name, False) or "other"
            for node in nodes}


def optimized_node_kinds(saved: Any, optimized: Any) -> dict[str, str]:
    """Kinds of the nodes ONNX Runtime runs (its optimized graph), by the saved node that produced the same output
    (a fused node outputs what the last node it replaced did)."""
    kinds = onnx_node_kinds(saved)
    producer_kind = {output: kinds[node.name] for node in saved.graph.node for output in node.output}
    result = {}
    for node in optimized.graph.node:
        found = [producer_kind[name] for name in node.output if name in producer_kind]
        if not found:
            found = [producer_kind[name] for name in node.input if name in producer_kind]
        result[node.name] = found[0] if found else kinds.get(node.name, "other")
    return result


def onnx_profile(path: Path, ids: np.ndarray, mask: np.ndarray, settings: ProfileSettings) -> dict[str, Any]:
    """Milliseconds per run by kind and the top op types of ONNX Runtime's node profile of ``path``."""
    import onnx
    import onnxruntime as ort

    feed = {"input_ids": ids, "attention_mask": mask}
    plain = onnx_session(path, settings.threads)
    unprofiled = faster_half_ms(lambda: plain.run(["logits"], feed), settings)
    with tempfile.TemporaryDirectory(prefix="pocketbert-profile-") as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = settings.threads, 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(settings.warmup + settings.repeats):
            session.run(["logits"], feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        kinds = optimized_node_kinds(onnx.load(str(path)), onnx.load(str(Path(folder) / "optimized.onnx")))
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[-settings.repeats:]
    per_run: dict[int, Counter[str]] = {run["ts"]: Counter() for run in runs}  # run start -> kind -> us
    ends = {run["ts"]: run["ts"] + run["dur"] for run in runs}
    per_op: Counter[str] = Counter()
    op_nodes: Counter[str] = Counter()
    node_count: Counter[str] = Counter()
    first = runs[0]["ts"]
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        run_start = next((start for start, end in ends.items() if start <= event["ts"] <= end), None)
        if run_start is None:  # a warm-up run
            continue
        kind = kinds.get(name.removesuffix("_kernel_time"), "other")
        op = event.get("args", {}).get("op_name", "?")
        per_run[run_start][kind] += event["dur"]
        per_op[op] += event["dur"]
        if run_start == first:  # node counts: one run
            node_count[kind] += 1
            op_nodes[op] += 1
    per_call = []
    for run in runs:
        kinds_ms = {kind: per_run[run["ts"]][kind] / 1000 for kind in KINDS if kind != "other"}
        kinds_ms["other"] = run["dur"] / 1000 - sum(kinds_ms.values())  # outside kernels, and unplaced nodes
        per_call.append(kinds_ms)
    kinds_ms, total = quiet_mean(per_call)
    repeats = len(runs)
    top = [{"op": op, "ms": us / 1000 / repeats, "calls": op_nodes[op]}
           for op, us in per_op.most_common(settings.top_ops)]
    return {"runtime": f"onnxruntime {ort.__version__} ({path.name}, node profile)", "total_ms": total,
            "unprofiled_ms": unprofiled, "kinds_ms": kinds_ms, "nodes_by_kind": dict(node_count), "top_ops": top}


def dominant(kinds_ms: dict[str, float]) -> str:
    """The layer kind with the most time ("other" is not a layer)."""
    return max((kind for kind in kinds_ms if kind != "other"), key=lambda kind: kinds_ms[kind])


def run_profile(shipped: ShippedModel, eval_set: EvalSet, onnx_files: dict[str, Path], settings: ProfileSettings
                ) -> dict[str, Any]:
    """Profiles at every length of ``settings`` up to the model's max length (a real test row padded to it)."""
    lengths = sorted({length for length in settings.lengths if length <= shipped.max_length})
    dropped = sorted({length for length in settings.lengths if length > shipped.max_length})
    profiles = []
    for length in lengths:
        ids, mask = eval_set.fixed_length(0, length)
        found = [torch_profile(shipped, ids, mask, settings)]
        found += [onnx_profile(path, ids, mask, settings) for path in onnx_files.values()]
        for variant, profile in zip(["pytorch_fp32", *onnx_files], found, strict=True):
            profile.update(variant=variant, length=length, dominant=dominant(profile["kinds_ms"]))
            profiles.append(profile)
    return {"settings": vars(settings), "lengths": lengths, "dropped_lengths": dropped,
            "max_length": shipped.max_length, "profiles": profiles}


def markdown(report: dict[str, Any]) -> str:
    """One table of kinds (ms per call and share) per variant and length, the top ops, and the verdict."""
    settings = report["settings"]
    lines = [f"Batch 1, a real test headline padded to each length; {settings['threads']} thread(s), "
             f"{settings['warmup']} warm-up + {settings['repeats']} profiled calls; ms per call, the mean over the "
             "faster half of the calls (a busy machine's slow calls dropped). Profiling adds overhead per op: read "
             "the shares; the unprofiled time of the same call is given beside the verdict.", ""]
    if report["dropped_lengths"]:
        lines += [f"Lengths above the model's max length ({report['max_length']}) skipped: "
                  f"{report['dropped_lengths']}.", ""]
    profiles = report["profiles"]
    for length in report["lengths"]:
        group = [p for p in profiles if p["length"] == length]
        lines.append(f"### {length} tokens\n")
        lines.append("| kind | " + " | ".join(f"{p['variant']} ms | share" for p in group) + " |")
        lines.append("|---|" + "---|---|" * len(group))
        for kind in KINDS:
            cells = [f"{p['kinds_ms'][kind]:.3f} | {100 * p['kinds_ms'][kind] / p['total_ms']:.1f}%" for p in group]
            lines.append(f"| {TITLES[kind]} | " + " | ".join(cells) + " |")
        lines += ["| **total** | " + " | ".join(f"{p['total_ms']:.3f} | 100.0%" for p in group) + " |", ""]
    lines += ["Dominant layer kind:"]
    for p in profiles:
        share = 100 * p["kinds_ms"][p["dominant"]] / p["total_ms"]
        extra = f" (unprofiled: {p['unprofiled_ms']:.3f} ms)" if "unprofiled_ms" in p else ""
        lines.append(f"- {p['variant']} @{p['length']} tokens: **{TITLES[p['dominant']]}** ({share:.1f}% of "
                     f"{p['total_ms']:.3f} ms{extra}; {p['runtime']})")
    lines += ["", "Top operators by own time:", ""]
    for p in profiles:
        ops = ", ".join(f"{op['op']} {op['ms']:.3f} ms ({op['calls']}x)" for op in p["top_ops"])
        lines.append(f"- {p['variant']} @{p['length']}: {ops}")
    lines += ["", "Kinds: embeddings (token, position, type and hashed n-gram lookups, LayerNorm); attention (Q/K/V, "
              "scores, softmax, output projection and its LayerNorm); FFN (intermediate + output dense and "
              "LayerNorm); pooler + classifier (pooling, n-gram bag, pooler dense, classifier); other (PyTorch: "
              "the attention mask and Python between modules; ONNX Runtime: time outside node kernels)."]
    return "\n".join(lines)


def write_profile(export_dir: Path, shipped: ShippedModel, eval_set: EvalSet, settings: ProfileSettings,
                  onnx_files: dict[str, Path]) -> dict[str, Any]:
    """``profile.json`` and ``profile.md`` in ``export_dir``; returns the report."""
    report = run_profile(shipped, eval_set, onnx_files, settings)
    write_json(export_dir / "profile.json", report)
    write_text(export_dir / "profile.md", f"# Per-layer profile\n\n{markdown(report)}\n")
    return report
