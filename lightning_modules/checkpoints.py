"""Reading checkpoints safely and rebuilding the exportable Hugging Face model from one.

Contract every pocketbert LightningModule keeps (see ``lightning_modules.training.save_export_info``): the classifier
that ships is an HF ``PreTrainedModel`` under the ``model.`` prefix of the state dict, and ``checkpoint["pocketbert"]``
holds ``label_names``, ``vocab`` (the tokens the shipped model's ids index, in id order), ``tokenizer_settings``
(lower-casing, accent stripping, CJK splitting, tokenizer class), ``max_length``, ``hf_class`` and ``hf_config``.
Nothing else (a teacher, a token remap used only in training) is needed to export.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

import export.ngram_bert  # noqa: F401  (registers the ngram_bert model type)
from export import EvalSet
from export.assets import build_tokenizer
from lightning_modules.encoders import EncoderSpec
from lightning_modules.errors import PocketbertError
from lightning_modules.runs import resolve_run_path

# Plain data types our checkpoints hold in their hyperparameters; allow-listed so that every load (ours and
# Lightning's own, e.g. resuming with --ckpt_path) can use weights_only=True instead of full unpickling.
SAFE_GLOBALS: list[Any] = [EncoderSpec, pathlib.PosixPath, pathlib.PurePosixPath]
torch.serialization.add_safe_globals(SAFE_GLOBALS)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a one-line error for missing, truncated or foreign files."""
    path = resolve_run_path(path)
    if not path.is_file():
        raise PocketbertError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__
        raise PocketbertError(f"cannot read checkpoint {path} (truncated or corrupted?): {reason}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise PocketbertError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


@dataclass
class ExportableModel:
    model: PreTrainedModel  # in eval mode, on CPU
    label_names: list[str]
    vocab: list[str]
    max_length: int
    tokenizer_settings: dict[str, Any] | None = None  # None: written before the settings were saved (defaults)


def load_exportable(path: str | Path) -> ExportableModel:
    """The shipped classifier of a pocketbert checkpoint, without the LightningModule or the data dir."""
    checkpoint = read_checkpoint(path)
    info = checkpoint.get("pocketbert")
    if not isinstance(info, dict) or "hf_config" not in info:
        raise PocketbertError(f"{path} has no pocketbert export info; was it written by a pocketbert recipe?")
    config_dict = dict(info["hf_config"])
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    # the Auto mapping knows transformers' classes and ours (export.ngram_bert registers itself on import)
    model: PreTrainedModel = AutoModelForSequenceClassification.from_config(config)
    if type(model).__name__ != info["hf_class"]:
        raise PocketbertError(f"{path} holds a {info['hf_class']}, which this version cannot rebuild "
                              f"(its config builds a {type(model).__name__})")
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise PocketbertError(f"{path}: weights do not fit the saved config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    return ExportableModel(model.eval(), list(info["label_names"]), list(info["vocab"]), int(info["max_length"]),
                           info.get("tokenizer_settings"))


def split_examples(datamodule: Any, split: str, exportable: ExportableModel) -> EvalSet:
    """A split's texts tokenized with the shipped vocabulary (as the app does), labels as shipped class ids."""
    examples, _ = datamodule.cleaned_splits[split]
    index = {name: i for i, name in enumerate(exportable.label_names)}
    kept = [example for example in examples if example.label in index]
    if not kept:
        raise PocketbertError(f"the {split} split has no rows with the model's labels")
    return EvalSet.from_texts([e.text for e in kept], [index[e.label] for e in kept],
                              build_tokenizer(exportable.vocab, exportable.tokenizer_settings), exportable.max_length)
