"""The columns of TensorBoard's HParams tab: what a user tunes, read from a run's resolved config.

One vocabulary (:data:`VOCABULARY`) for every run, because TensorBoard takes the table's columns from one run's
experiment summary; a run fills only the columns that apply to it: a teacher trained alone has no ``alpha``, a BERT
encoder no MobileBERT bottleneck (folded into ``encoder``), an encoder without n-grams no n-gram settings.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace

from callbacks.hparams_table import ColumnType, Scalar
from lightning_modules.encoders import PRESETS, EncoderSpec
from lightning_modules.runs import resolve_run_path

VOCABULARY: dict[str, ColumnType] = {
    "model": "string", "pretrained": "string", "encoder": "string", "num_layers": "float", "hidden_size": "float",
    "num_heads": "float", "intermediate_size": "float", "ngram_orders": "string", "ngram_buckets": "float",
    "ngram_dropout": "float", "pooling": "string", "ngram_bag": "bool",
    "learning_rate": "float", "dropout": "float", "weight_decay": "float", "warmup_ratio": "float",
    "batch_size": "float", "accumulate_grad_batches": "float", "max_epochs": "float", "max_length": "float",
    "limit_per_class": "float", "precision": "string", "seed": "float",
    "alpha": "float", "temperature": "float", "teacher": "string", "prune_vocab": "bool", "layer_map": "string",
    "hidden_weight": "float", "mask_probability": "float", "augmentation": "string",
}
# model.init_args keys shown as they are, when the model has them
MODEL_KEYS = ("learning_rate", "dropout", "weight_decay", "warmup_ratio", "alpha", "temperature", "mask_probability")


def run_columns(config: Namespace) -> dict[str, Scalar]:
    """The HParams values of the run ``config`` (a ``fit`` config as LightningCLI parsed it) describes."""
    model = _plain(config.get("model.init_args")) or {}
    columns: dict[str, Any] = {"model": str(config.get("model.class_path") or "").rpartition(".")[2]}
    if model.get("pretrained"):
        # the folder a `latest` pointer names at fit time: which pretraining run this one started from
        columns["pretrained"] = str(resolve_run_path(str(model["pretrained"])))
    spec = _encoder_spec(model)
    if spec is not None:
        columns.update(encoder_columns(spec, preset=model.get("preset")))
    columns.update({key: model[key] for key in MODEL_KEYS if model.get(key) is not None})
    data = _plain(config.get("data.init_args")) or {}
    columns.update({key: data[key] for key in ("batch_size", "max_length", "limit_per_class") if data.get(key)})
    augmentation = data.get("augmentation")
    if isinstance(augmentation, dict) and augmentation.get("class_path"):  # e.g. "EdaAugmentation copies=1 rate=0.1"
        settings = augmentation.get("init_args") or {}
        columns["augmentation"] = " ".join([str(augmentation["class_path"]).rpartition(".")[2],
                                            *(f"{key}={_plain(value)}" for key, value in sorted(settings.items()))])
    trainer = _plain(config.get("trainer")) or {}
    columns.update({key: trainer[key] for key in ("max_epochs", "accumulate_grad_batches") if trainer.get(key)})
    if trainer.get("precision") is not None:
        columns["precision"] = str(trainer["precision"])
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        columns["seed"] = seed
    columns.update(distillation_columns(model))
    return {key: value for key, value in columns.items() if isinstance(value, int | float | str | bool)}


def encoder_columns(spec: EncoderSpec, preset: str | None = None) -> dict[str, Scalar]:
    """The shape of an encoder trained from scratch, with only the fields its kind reads."""
    encoder = spec.kind if spec.kind == "bert" else (
        f"mobilebert (embedding {spec.embedding_size}, bottleneck {spec.intra_bottleneck_size})")
    columns: dict[str, Scalar] = {"encoder": f"{encoder}, preset {preset}" if preset else encoder,
                                  "num_layers": spec.num_layers, "hidden_size": spec.hidden_size,
                                  "num_heads": spec.num_heads, "intermediate_size": spec.intermediate_size}
    if spec.kind == "bert":  # n-grams and pooling exist only in the BERT encoder (export/ngram_bert.py)
        columns["pooling"] = spec.pooling
        if spec.ngram_orders:
            columns.update(ngram_orders=",".join(map(str, spec.ngram_orders)), ngram_buckets=spec.ngram_buckets,
                           ngram_dropout=spec.ngram_dropout, ngram_bag=spec.ngram_bag)
    return columns


def distillation_columns(model: dict[str, Any]) -> dict[str, Scalar]:
    """The teacher(s) and how the student learns from them (DistillationModule's arguments)."""
    teachers = [str(resolve_run_path(str(model["teacher_checkpoint"])))] if model.get("teacher_checkpoint") else []
    for teacher in model.get("teachers") or []:
        name = str(teacher.get("class_path", "")).rpartition(".")[2]
        args = teacher.get("init_args") or {}
        if "checkpoint" in args:
            args = {**args, "checkpoint": str(resolve_run_path(str(args["checkpoint"])))}
        teachers.append(f"{name}({', '.join(f'{k}={v}' for k, v in args.items() if v is not None)})")
    if not teachers:
        return {}
    # prune_vocab unset: on for a student from scratch, off for a pretrained one (DistillationModule's default)
    prune = model.get("prune_vocab")
    columns: dict[str, Scalar] = {"teacher": " + ".join(teachers),
                                  "prune_vocab": bool(not model.get("pretrained") if prune is None else prune)}
    if model.get("layer_map"):
        columns["layer_map"] = str(model["layer_map"])
        if model.get("hidden_weight") is not None:
            columns["hidden_weight"] = model["hidden_weight"]
    return columns


def _encoder_spec(model: dict[str, Any]) -> EncoderSpec | None:
    architecture = model.get("architecture")
    if isinstance(architecture, EncoderSpec):
        return architecture
    if isinstance(architecture, dict):
        return EncoderSpec(**architecture)
    preset = model.get("preset")
    return PRESETS.get(str(preset)) if preset else None


def _plain(value: Any) -> Any:
    """A jsonargparse Namespace as a dict, recursively."""
    return value.as_dict() if isinstance(value, Namespace) else value
