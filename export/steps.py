"""One function per fit-end callback: write a family of artifacts, check them, record them in the manifest.

Each function is what its callback (``callbacks/``) and ``python -m recipes export`` run, so a checkpoint exported
after training gets exactly the files a training run writes.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import PreTrainedModel

from export import coreml, monitoring, personalization, shapes
from export.assets import (
    EDGE_CASES,
    NORMALIZATION,
    tokenizer_settings,
    wordpiece_settings,
    write_golden_tokens,
    write_labels,
    write_vocab,
)
from export.baseline import baseline_row
from export.benchmark import Budgets, TimingSettings, add_baseline, check_budgets, run_benchmark, write_reports
from export.context import ExportContext
from export.errors import ExportError
from export.evaluation import (
    EvalSet,
    accuracy_and_macro_f1,
    hf_predictor,
    onnx_predictor,
    parity,
    predict_all,
    torch_predictor,
)
from export.files import read_manifest, record, write_json
from export.graph import MIN_SEQUENCE, PARITY_TOLERANCE, ShippedModel, load_hf_dir
from export.onnx_export import export_onnx, onnx_session, quantize_onnx_int8
from export.profile import ProfileSettings, write_profile
from export.profile import markdown as profile_markdown
from export.pruning import sparsity_report
from export.torch_export import load_torchscript, quantize_int8, save_pytorch, save_torchscript


def _figures(ctx: ExportContext, logits: np.ndarray) -> dict[str, Any]:
    """Parity with PyTorch fp32 and test metrics of one variant's logits."""
    return {"test_examples": len(ctx.eval_set), "parity_vs_pytorch": parity(ctx.reference_logits, logits),
            **accuracy_and_macro_f1(logits, ctx.eval_set.labels, len(ctx.shipped.label_names))}


def write_pytorch(ctx: ExportContext, int8: bool = True) -> None:
    """``pytorch/`` (fp32, ``from_pretrained`` layout) and ``model.int8.pt`` (dynamic INT8, TorchScript)."""
    path = ctx.export_dir / "pytorch"
    save_pytorch(ctx.shipped, path)
    reloaded = predict_all(hf_predictor(load_hf_dir(path)), ctx.eval_set)
    record(ctx.export_dir, "pytorch_fp32", "pytorch", path, **_figures(ctx, reloaded))
    if int8:
        int8_path = ctx.export_dir / "model.int8.pt"
        example = ctx.eval_set.fixed_length(0, min(16, ctx.shipped.max_length))
        save_torchscript(quantize_int8(ctx.shipped), int8_path, example)
        logits = predict_all(torch_predictor(load_torchscript(int8_path)), ctx.eval_set)
        record(ctx.export_dir, "pytorch_int8", "torchscript", int8_path, quantization="dynamic int8 nn.Linear",
               **_figures(ctx, logits))


def write_onnx(ctx: ExportContext, opset: int = 18, int8: bool = True, min_agreement: float = 0.999) -> None:
    """``model.onnx`` (dynamic batch and length) checked against PyTorch on the test set, and ``model.int8.onnx``."""
    path = ctx.export_dir / "model.onnx"
    export_onnx(ctx.shipped, path, opset)
    figures = _figures(ctx, predict_all(onnx_predictor(onnx_session(path)), ctx.eval_set))
    agreement = figures["parity_vs_pytorch"]["agreement"]
    if agreement < min_agreement:
        path.unlink()  # not left behind as if valid
        raise ExportError(f"ONNX fp32 agrees with PyTorch on only {agreement:.4f} of the test set (< {min_agreement}); "
                          f"max logit difference {figures['parity_vs_pytorch']['max_abs_logit_diff']:.3g}")
    record(ctx.export_dir, "onnx_fp32", "onnx", path, opset=opset, **figures)
    if int8:
        int8_path = ctx.export_dir / "model.int8.onnx"
        quantize_onnx_int8(path, int8_path)
        logits = predict_all(onnx_predictor(onnx_session(int8_path)), ctx.eval_set)
        record(ctx.export_dir, "onnx_int8", "onnx", int8_path, opset=opset,
               quantization="onnxruntime dynamic int8, per-channel weights", **_figures(ctx, logits))


def write_coreml(ctx: ExportContext, settings: coreml.CoreMLSettings, *, name: str, quantize_8bit: bool,
                 head: coreml.UpdatableHead | None, parity_examples: int, sparse: bool = False) -> None:
    """``<name>.mlpackage``, ``<name>8Bit.mlpackage`` and the updatable ``<name>Personalizable.mlpackage``.

    Input length: ``settings.sequence_length`` (the model's max length when None; ``auto``: from the training data),
    a ``RangeDim`` from ``flexible_min`` up to it, or ``enumerated`` lengths (``auto``: from the training data); see
    :mod:`export.shapes`."""
    sequence_length, flexible_min, enumerated = settings.sequence_length, settings.flexible_min, settings.enumerated
    with coreml.scratch_space():
        lengths, chosen_from = None, None
        if "auto" in (sequence_length, enumerated):
            lengths, source = shapes.training_lengths(ctx.tokenizer, ctx.train_texts, ctx.shipped.max_length,
                                                      ctx.eval_set)
            chosen_from = shapes.length_stats(lengths, source)
        length, chosen = shapes.resolve(sequence_length, enumerated, ctx.shipped.max_length, lengths)
        kind = "enumerated" if chosen and len(chosen) > 1 else "range" if flexible_min is not None else "fixed"
        input_lengths: dict[str, Any] = {"kind": kind, "lengths": chosen or [length], "chosen_from": chosen_from}
        if kind != "range":
            input_lengths["test_routing"] = shapes.routing(ctx.eval_set, chosen or [length])
        _write_coreml(ctx, settings.resolved(length, chosen), name=name, quantize_8bit=quantize_8bit, head=head,
                      parity_examples=parity_examples, input_lengths=input_lengths, sparse=sparse)


def _write_coreml(ctx: ExportContext, resolved: coreml.CoreMLSettings, *, name: str, quantize_8bit: bool,
                  head: coreml.UpdatableHead | None, parity_examples: int, input_lengths: dict[str, Any],
                  sparse: bool = False) -> None:
    shipped, out = ctx.shipped, ctx.export_dir
    sequence_length, enumerated, target = resolved.length, resolved.lengths, resolved.target
    settings = resolved.record()
    meta = coreml.metadata(shipped, tokenizer_settings(ctx.tokenizer, shipped.max_length))
    mlmodel, program = coreml.convert(shipped, resolved, metadata=meta)
    graph = _require_parity(coreml.graph_parity(program, shipped, ctx.eval_set, sequence_length, parity_examples),
                            "the Core ML export graph")
    common = {**settings, "graph_parity_vs_pytorch": graph, "checked_on_linux": "spec, I/O, exported-graph numerics",
              "input_lengths": input_lengths}
    if enumerated and len(enumerated) > 1:  # every enumerated length is a shape the app may run: check each
        common["graph_parity_by_length"] = {
            str(length): _require_parity(coreml.graph_parity(program, shipped, ctx.eval_set, length, parity_examples,
                                                             fitting_first=True),
                                         f"the Core ML export graph at {length} tokens") for length in enumerated}
    path = out / f"{name}.mlpackage"
    coreml.save(mlmodel, path)
    record(out, "coreml", "coreml", path, spec=_io(path), **common)
    if quantize_8bit:
        path = out / f"{name}8Bit.mlpackage"
        coreml.save(coreml.quantize_weights_8bit(mlmodel), path)
        simulated = coreml.simulate_8bit_weights(shipped.model)
        record(out, "coreml_w8", "coreml", path, spec=_io(path), **settings,
               quantization="linear symmetric int8 weights, per output channel",
               simulated_in_pytorch=_figures(ctx, predict_all(hf_predictor(simulated), ctx.eval_set)),
               checked_on_linux="spec, I/O; accuracy simulated with the same int8 weights in PyTorch fp32 maths")
    if sparse:
        write_sparse(ctx, name, mlmodel, settings, joint_8bit=quantize_8bit and target in coreml.IOS18_TARGETS)
    if head is not None:
        write_personalizable(ctx, name, resolved, meta, head, parity_examples)


def write_sparse(ctx: ExportContext, name: str, mlmodel: Any, settings: dict[str, Any], joint_8bit: bool) -> None:
    """``<name>Sparse.mlpackage`` (fp16, zeros stored as a bit mask) and, on iOS18, ``<name>Sparse8Bit.mlpackage``
    (int8 non-zero values): the size a pruned model reaches in the app."""
    out = ctx.export_dir
    figures = sparsity_report(ctx.shipped.model)
    zeros = {key: figures[key] for key in ("prunable_sparsity", "model_sparsity")}
    sparse = coreml.sparse_weights(mlmodel)
    path = out / f"{name}Sparse.mlpackage"
    coreml.save(sparse, path)
    record(out, "coreml_sparse", "coreml", path, spec=_io(path), **settings, **zeros,
           sparse_ops=coreml.count_ops(path, "constexpr_sparse_to_dense"),
           checked_on_linux="spec, I/O, sparse weight ops; the same numerics as the dense model (zeros stay zeros)")
    if joint_8bit:
        path = out / f"{name}Sparse8Bit.mlpackage"
        coreml.save(coreml.quantize_weights_8bit(sparse, joint_compression=True), path)
        simulated = coreml.simulate_8bit_weights(ctx.shipped.model)
        record(out, "coreml_sparse_w8", "coreml", path, spec=_io(path), **settings, **zeros,
               quantization="sparse + linear symmetric int8 weights (joint compression)",
               simulated_in_pytorch=_figures(ctx, predict_all(hf_predictor(simulated), ctx.eval_set)),
               checked_on_linux="spec, I/O; accuracy simulated with the same int8 weights in PyTorch fp32 maths")


def write_personalizable(ctx: ExportContext, name: str, settings: coreml.CoreMLSettings, meta: dict[str, str],
                         head: coreml.UpdatableHead, parity_examples: int) -> None:
    out = ctx.export_dir
    encoder, program = coreml.convert(ctx.shipped, settings, metadata=meta, output="features")
    head_model = coreml.updatable_head(ctx.shipped, head)
    coreml.save(encoder, out / f"{name}Encoder.mlpackage")
    coreml.save(head_model, out / f"{name}Head.mlmodel")
    pipeline = coreml.personalizable_pipeline(encoder, head_model)
    pipeline.short_description = "pocketbert classifier whose head MLUpdateTask can fine-tune on device"
    pipeline.user_defined_metadata.update(meta)
    path = out / f"{name}Personalizable.mlpackage"
    coreml.save(pipeline, path)
    spec = coreml.describe(coreml.load_spec(path))
    checks = _require_parity(head_parity(program, coreml.load_spec(out / f"{name}Head.mlmodel"), ctx,
                                         settings.length, parity_examples), "the personalizable pipeline")
    record(out, "coreml_personalizable", "coreml", path, spec=spec, pipeline_parity_vs_pytorch=checks,
           updatable_head=vars(head), **settings.record())
    record(out, "coreml_encoder", "coreml-part", out / f"{name}Encoder.mlpackage")
    head_entry = record(out, "coreml_head", "coreml-part", out / f"{name}Head.mlmodel")
    write_rollback(ctx, out / f"{name}Head.mlmodel", head_entry["sha256"], head)


def write_rollback(ctx: ExportContext, head_path: Path, head_sha256: str, head: coreml.UpdatableHead) -> None:
    """``personalization.json``: the original head weights and the golden check that decides whether to keep an
    on-device update (see :func:`export.personalization.rollback_bundle`)."""
    update = personalization.read_head_update(coreml.load_spec(head_path))
    size = min(head.golden_check_size, len(ctx.eval_set))
    labels = ctx.eval_set.labels[:size]
    accuracy = float(np.mean(ctx.reference_logits[:size].argmax(axis=1) == np.asarray(labels))) if size else 0.0
    payload = personalization.rollback_bundle(
        update.weight, update.bias, update.labels, update.settings(), head_file=head_path.name,
        head_sha256=head_sha256, max_golden_drop=head.max_golden_accuracy_drop,
        golden_ids=ctx.eval_set.token_ids[:size], golden_labels=labels, golden_accuracy=accuracy)
    path = ctx.export_dir / "personalization.json"
    write_json(path, payload)
    record(ctx.export_dir, "personalization", "json", path, golden_check_examples=size,
           max_golden_accuracy_drop=head.max_golden_accuracy_drop)


def head_parity(program: torch.export.ExportedProgram, head_spec: Any, ctx: ExportContext, sequence_length: int,
                examples: int) -> dict[str, Any]:
    """The pipeline's maths on Linux: exported encoder features -> the saved head's weights -> softmax, vs PyTorch."""
    layer = next(lay for lay in head_spec.neuralNetworkClassifier.layers if lay.WhichOneof("layer") == "innerProduct")
    params = layer.innerProduct
    weight = np.asarray(params.weights.floatValue, dtype=np.float32).reshape(params.outputChannels,
                                                                            params.inputChannels)
    bias = np.asarray(params.bias.floatValue, dtype=np.float32)
    module = program.module()
    reference, logits = [], []
    with torch.inference_mode():
        for index in range(min(examples, len(ctx.eval_set))):
            ids, mask = (torch.from_numpy(a) for a in ctx.eval_set.fixed_length(index, sequence_length))
            reference.append(ctx.shipped.model(input_ids=ids, attention_mask=mask).logits.float().numpy()[0])
            logits.append(weight @ module(ids.int(), mask.int()).float().numpy() + bias)
    return {"examples": len(reference), **parity(np.stack(reference), np.stack(logits))}


def _require_parity(figures: dict[str, Any], what: str, tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Stop the export when a graph that should compute the PyTorch model's logits does not."""
    if figures["max_abs_logit_diff"] > tolerance:
        raise ExportError(f"{what} differs from the PyTorch model by {figures['max_abs_logit_diff']:.3g} in logits "
                          f"(> {tolerance}); the export wrapper does not match this architecture")
    return figures


def _io(path: Path) -> dict[str, Any]:
    described = coreml.describe(coreml.load_spec(path))
    return {key: described[key] for key in ("type", "specification_version", "inputs", "outputs")}


def write_app_assets(ctx: ExportContext, golden_texts: list[str] | None = None, samples: int = 16) -> None:
    """``vocab.txt``, ``labels.json`` and ``golden_tokens.json`` (edge cases + test headlines)."""
    out, shipped = ctx.export_dir, ctx.shipped
    write_vocab(shipped.vocab, out / "vocab.txt")
    # what a reader of the bundle needs to turn raw text into the model's ids (python -m recipes classify reads it)
    record(out, "vocab", "text", out / "vocab.txt", tokens=len(shipped.vocab), normalization=NORMALIZATION,
           max_length=shipped.max_length, tokenizer=wordpiece_settings(shipped.tokenizer_settings))
    write_labels(shipped.label_names, out / "labels.json")
    record(out, "labels", "json", out / "labels.json", labels=len(shipped.label_names))
    texts = [*EDGE_CASES, *(golden_texts if golden_texts is not None else ctx.texts[:samples])]
    write_golden_tokens(ctx.tokenizer, texts, shipped.max_length, out / "golden_tokens.json")
    record(out, "golden_tokens", "json", out / "golden_tokens.json", cases=len(texts),
           **tokenizer_agreement(ctx))
    write_monitoring_baseline(ctx)


def write_monitoring_baseline(ctx: ExportContext) -> None:
    """``monitoring_baseline.json``: the shipped model's predicted-class shares on the golden (test) set."""
    predicted = ctx.reference_logits.argmax(axis=1)
    payload = monitoring.build_baseline(predicted, ctx.shipped.label_names, true_labels=ctx.eval_set.labels,
                                        source=f"PyTorch fp32 predictions of {ctx.shipped.source} on the test set")
    path = ctx.export_dir / "monitoring_baseline.json"
    write_json(path, payload)
    record(ctx.export_dir, "monitoring_baseline", "json", path, predictions=payload["predictions"],
           thresholds=payload["thresholds"])


def tokenizer_agreement(ctx: ExportContext, limit: int = 500) -> dict[str, Any]:
    """How often the tokenizer an app rebuilds from ``vocab.txt`` (and the recorded settings) gives the ids the
    training tokenizer gave the test texts (mapped into the shipped vocabulary by token when it was pruned)."""
    training = ctx.training_ids if ctx.training_ids is not None else ctx.eval_set.token_ids
    if not ctx.texts or len(training) != len(ctx.texts):
        return {}
    count = min(limit, len(ctx.texts))
    rebuilt = EvalSet.from_texts(ctx.texts[:count], [0] * count, ctx.tokenizer, ctx.shipped.max_length)
    same = sum(a == b for a, b in zip(rebuilt.token_ids, training[:count], strict=True))
    return {"vocab_tokenizer_matches_test_ids": same / count, "checked_texts": count}


def write_benchmark(ctx: ExportContext, timing: TimingSettings, budgets: Budgets,
                    profile: ProfileSettings | None = None) -> list[dict[str, Any]]:
    """``benchmark.json``/``benchmark.md``, the table in TensorBoard's TEXT tab, a printed table, and with ``profile``
    the per-layer ``profile.json``/``profile.md``; raises when a budget breaks (after every report is written)."""
    num_labels = len(ctx.shipped.label_names)
    rows = run_benchmark(ctx.export_dir, ctx.eval_set, num_labels, ctx.shipped.num_parameters, timing)
    if ctx.train_texts and len(ctx.texts) == len(ctx.eval_set):
        rows = add_baseline(rows, baseline_row(ctx.train_texts, ctx.train_labels, ctx.texts, ctx.eval_set.labels,
                                               num_labels))
    broken = check_budgets(rows, budgets)
    text = write_reports(ctx.export_dir, rows, timing, len(ctx.eval_set), broken, budgets)
    if profile is not None:
        write_layer_profile(ctx, profile)
    if ctx.writer is not None:
        # the table only: one scalar card per variant and figure (about 30 single points) swamped TIME SERIES
        ctx.writer.add_text("export/benchmark", text, ctx.step)
    print(f"\nexport benchmark ({ctx.export_dir / 'benchmark.md'}):\n{text}\n", flush=True)
    if broken:
        raise ExportError(f"export budget broken: {'; '.join(broken)} (see {ctx.export_dir / 'benchmark.md'}; "
                          "shrink the model or relax ExportBenchmark's budgets)")
    return rows


def write_layer_profile(ctx: ExportContext, settings: ProfileSettings) -> dict[str, Any]:
    """``profile.json``/``profile.md``: time by layer kind of PyTorch fp32 and of the exported ONNX files (INT8 first),
    printed and logged to TensorBoard as text."""
    artifacts = read_manifest(ctx.export_dir)["artifacts"]
    onnx_files = {name: ctx.export_dir / artifacts[name]["path"] for name in ("onnx_int8", "onnx_fp32")
                  if name in artifacts}
    report = write_profile(ctx.export_dir, ctx.shipped, ctx.eval_set, settings, onnx_files)
    verdicts = [f"{p['variant']} @{p['length']} tokens: {p['dominant']}" for p in report["profiles"]]
    if ctx.writer is not None:
        ctx.writer.add_text("export/profile", profile_markdown(report), ctx.step)
    print(f"per-layer profile ({ctx.export_dir / 'profile.md'}): dominant kind {'; '.join(verdicts)}", flush=True)
    return report


def preflight(model: torch.nn.Module, max_length: int, fmt: str, coreml_settings: coreml.CoreMLSettings | None = None,
              head: coreml.UpdatableHead | None = None) -> None:
    """Trial-export an untrained ``model`` (ONNX, or Core ML with ``coreml_settings`` and the updatable ``head``)
    into a temp dir so unsupported ops fail in seconds."""
    model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()  # leave the training model alone
    config: Any = getattr(model, "config", None)
    labels = [str(v) for v in (getattr(config, "id2label", None) or {0: "a", 1: "b"}).values()]
    shipped = ShippedModel(model=cast(PreTrainedModel, model), label_names=labels, vocab=[], max_length=max_length,
                           source="untrained (pre-flight)")
    generator = torch.Generator().manual_seed(0)
    vocab_size = int(getattr(config, "vocab_size", 1000))
    lengths = (min(3, max_length - 2), max(1, min(20, max_length - 2)))
    rows = [[101, *torch.randint(3, vocab_size, (n,), generator=generator).tolist(), 102] for n in lengths]
    eval_set = EvalSet(rows, [0, 0])
    with tempfile.TemporaryDirectory(prefix="pocketbert-preflight-") as tmp:
        out = Path(tmp)
        if fmt == "onnx":
            export_onnx(shipped, out / "model.onnx")
            onnx_logits = predict_all(onnx_predictor(onnx_session(out / "model.onnx")), eval_set)
            torch_logits = predict_all(hf_predictor(shipped.model), eval_set)
            figures = parity(torch_logits, onnx_logits)
            if figures["max_abs_logit_diff"] > PARITY_TOLERANCE:
                raise ExportError(f"pre-flight: ONNX logits differ from PyTorch by {figures['max_abs_logit_diff']:.3g}")
            return
        with coreml.scratch_space():
            _preflight_coreml(shipped, eval_set, out, coreml_settings or coreml.CoreMLSettings(), head)


def _preflight_coreml(shipped: ShippedModel, eval_set: EvalSet, out: Path, requested: coreml.CoreMLSettings,
                      head: coreml.UpdatableHead | None) -> None:
    # no training data yet: an `auto` length converts as the max length, `auto` enumerated lengths as two of them
    sequence_length, enumerated = requested.sequence_length, requested.enumerated
    settings = requested.resolved(*shapes.resolve(
        None if sequence_length == "auto" else sequence_length,
        [max(MIN_SEQUENCE, shipped.max_length // 2), shipped.max_length] if enumerated == "auto" else enumerated,
        shipped.max_length, None))
    mlmodel, program = coreml.convert(shipped, settings, metadata={})
    figures = coreml.graph_parity(program, shipped, eval_set, settings.length, 2)
    if figures["max_abs_logit_diff"] > PARITY_TOLERANCE:
        raise ExportError(f"pre-flight: the Core ML export graph differs from PyTorch by "
                          f"{figures['max_abs_logit_diff']:.3g}")
    coreml.save(mlmodel, out / "model.mlpackage")
    if head is not None:
        encoder, _ = coreml.convert(shipped, settings, metadata={}, output="features")
        coreml.save(coreml.personalizable_pipeline(encoder, coreml.updatable_head(shipped, head)),
                    out / "personalizable.mlpackage")
