"""Builds the :class:`export.ExportContext` a fit-end callback works on (shared helper, not a callback).

The model that ships is the best checkpoint's (``trainer.checkpoint_callback.best_model_path``). Callbacks do not
import ``lightning_modules`` (dependencies point callbacks -> export), so the checkpoint is read with plain torch:
by the checkpoint contract the shipped Hugging Face classifier is ``pl_module.model`` and its weights sit under the
``model.`` prefix of the state dict, with labels, vocab and max length in ``checkpoint["pocketbert"]``. The
weights are loaded into a copy of ``pl_module.model`` (same class and config), so any classifier a recipe trains
(teacher or distilled student) rebuilds without knowing its LightningModule.
"""

from __future__ import annotations

import copy
import weakref
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from export import EvalSet, ExportContext, ExportError, ShippedModel, start_manifest

_CACHE: weakref.WeakKeyDictionary[L.Trainer, tuple[str, ExportContext]] = weakref.WeakKeyDictionary()


def export_dir(trainer: L.Trainer) -> Path:
    """``<log dir>/export``, read on this rank without a collective call.

    ``trainer.log_dir`` broadcasts rank 0's value to every rank. Exporters run on rank 0 alone (at fit end, while
    the other ranks move on to the CLI's test), so under DDP that broadcast would pair with the other ranks' next
    collective call and hang the run. This is the same lookup as ``trainer.log_dir``, minus the broadcast.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    log_dir: str | None
    if isinstance(logger, TensorBoardLogger | CSVLogger):
        log_dir = logger.log_dir
    else:
        log_dir = getattr(logger, "save_dir", None) if logger is not None else None
    return Path(log_dir or trainer.default_root_dir) / "export"


def shipped_model(trainer: L.Trainer, pl_module: L.LightningModule) -> ShippedModel:
    """The best checkpoint's classifier, or the final weights when no checkpoint was saved."""
    live = getattr(pl_module, "model", None)
    if not isinstance(live, torch.nn.Module):
        raise ExportError(f"{type(pl_module).__name__} has no `model` attribute holding the HF classifier; export "
                          "callbacks need the pocketbert checkpoint contract (see lightning_modules/checkpoints.py)")
    model: Any = copy.deepcopy(live).to(device="cpu", dtype=torch.float32).eval()
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if best:
        checkpoint = torch.load(best, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [key for key in missing if "position_ids" not in key]
        if missing or unexpected:
            raise ExportError(f"{best}: the `model.` weights do not fit {type(model).__name__} (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]})")
        info = checkpoint.get("pocketbert")
    else:
        rank_zero_warn("no best checkpoint (checkpointing off?): exporting the final weights")
        holder: dict[str, Any] = {}
        pl_module.on_save_checkpoint(holder)
        info = holder.get("pocketbert")
    if not isinstance(info, dict):
        raise ExportError(f"{best or type(pl_module).__name__} has no pocketbert export info (label names, vocab); "
                          "was it written by a pocketbert LightningModule?")
    return ShippedModel(model, list(info["label_names"]), list(info["vocab"]), int(info["max_length"]),
                        source=str(best), tokenizer_settings=info.get("tokenizer_settings"))


def label_ids_by_name(datamodule: Any, shipped: ShippedModel) -> list[int] | None:
    """``mapped[data label id]`` = the shipped model's id of that label name, or None when both orders agree.

    A DataModule numbers its labels by its own label list; a checkpoint exported with another recipe (or a list in
    another order) numbers them differently, and comparing ids would score every prediction against the wrong class.
    """
    data_names = getattr(datamodule, "label_names", None)
    if data_names is None or list(data_names) == list(shipped.label_names):
        return None
    data_names = list(data_names)
    if sorted(data_names) != sorted(shipped.label_names):
        extra = sorted(set(data_names) - set(shipped.label_names))
        absent = sorted(set(shipped.label_names) - set(data_names))
        raise ExportError(f"the data's labels differ from the checkpoint's (in the data only: {extra}; in the "
                          f"checkpoint only: {absent}); export with the config the checkpoint was trained with, or "
                          "set data.init_args.labels to the checkpoint's label list")
    index = {name: i for i, name in enumerate(shipped.label_names)}
    return [index[name] for name in data_names]


def eval_set(datamodule: Any, shipped: ShippedModel) -> tuple[EvalSet, list[str], list[list[int]] | None]:
    """The DataModule's real test set in the shipped model's ids (re-tokenized if the training vocab differs,
    e.g. a student whose vocabulary was pruned) and label ids (mapped by name), its texts, and, when re-tokenized,
    the ids the training tokenizer gave those texts mapped into the shipped vocabulary (see ``training_ids``)."""
    if datamodule is None or not hasattr(datamodule, "test_dataloader"):
        raise ExportError("export callbacks need a DataModule with a test split (the recipe's `data:` section)")
    # the whole split (sets the DataModule up if fit did not); test_dataloader() is one rank's shard under DDP
    whole = getattr(datamodule, "eval_dataloader", None)
    test_loader = whole("test") if callable(whole) else datamodule.test_dataloader()
    mapped = label_ids_by_name(datamodule, shipped)
    texts: list[str] = list(getattr(datamodule, "texts", {}).get("test", []))
    tokenizer = getattr(datamodule, "tokenizer", None)
    training_vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if tokenizer is not None else None
    if tokenizer is not None and [token for token, _ in training_vocab or []] == shipped.vocab:
        pad_id = int(tokenizer.pad_token_id or 0)
        examples = EvalSet.from_batches(test_loader, pad_id)
        training = None
    else:
        if not texts:
            raise ExportError("the shipped model's vocab differs from the DataModule tokenizer and the test texts are "
                              "unavailable to re-tokenize; export needs DataModule.texts['test']")
        labels = [int(label) for batch in test_loader for label in batch["labels"]]
        examples = EvalSet.from_texts(texts, labels, shipped.tokenizer(), shipped.max_length)
        training = training_ids(datamodule, shipped)
    if mapped is not None:
        examples.labels = [mapped[label] for label in examples.labels]
    return examples, texts, training


def training_ids(datamodule: Any, shipped: ShippedModel) -> list[list[int]] | None:
    """The test split's ids from the DataModule's tokenizer, token by token in the shipped vocabulary ([UNK] for a
    token it lacks): what the shipped tokenizer should reproduce. Compared with the shipped tokenizer's own ids,
    this shows settings that did not travel (lower-casing, accents) and words that pruning splits differently."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    dataset = getattr(datamodule, "datasets", {}).get("test")
    tokens = getattr(dataset, "tokens", None)
    if tokenizer is None or tokens is None:
        return None
    index = {token: i for i, token in enumerate(shipped.vocab)}
    unk = index.get(str(getattr(tokenizer, "unk_token", "[UNK]")), 0)
    rows = (tokenizer.convert_ids_to_tokens(tokens.row(i).tolist()) for i in range(len(tokens)))
    return [[index.get(token, unk) for token in row] for row in rows]


def train_split(datamodule: Any, shipped: ShippedModel | None = None) -> tuple[list[str], list[int]]:
    """The training texts and label ids in the shipped model's numbering (what the benchmark's linear baseline is
    fitted on); empty if unavailable."""
    texts = list(getattr(datamodule, "texts", {}).get("train", []))
    dataset = getattr(datamodule, "datasets", {}).get("train")
    labels = getattr(dataset, "labels", None)
    if not texts or labels is None or len(labels) != len(texts):
        return [], []
    mapped = label_ids_by_name(datamodule, shipped) if shipped is not None else None
    return texts, [int(label) if mapped is None else mapped[int(label)] for label in labels]


def export_context(trainer: L.Trainer, pl_module: L.LightningModule) -> ExportContext:
    """One context per trainer and best checkpoint, shared by the fit-end callbacks of a run."""
    best = str(getattr(trainer.checkpoint_callback, "best_model_path", "") or f"final@{trainer.global_step}")
    cached = _CACHE.get(trainer)
    if cached is not None and cached[0] == best:
        return cached[1]
    shipped = shipped_model(trainer, pl_module)
    datamodule = getattr(trainer, "datamodule", None)
    examples, texts, training = eval_set(datamodule, shipped)
    train_texts, train_labels = train_split(datamodule, shipped)
    writer = trainer.logger.experiment if isinstance(trainer.logger, TensorBoardLogger) else None
    context = ExportContext(shipped, examples, export_dir(trainer), texts=texts, train_texts=train_texts,
                            train_labels=train_labels, writer=writer, step=trainer.global_step, training_ids=training)
    start_manifest(context.export_dir, source_checkpoint=shipped.source, label_names=shipped.label_names,
                max_length=shipped.max_length, parameters=shipped.num_parameters, test_examples=len(examples))
    _CACHE[trainer] = (best, context)
    return context
