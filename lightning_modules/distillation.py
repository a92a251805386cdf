"""The distillation LightningModule: a small student learns from a fine-tuned teacher's soft labels."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import PreTrainedModel
from typing_extensions import override

from export.files import write_json
from lightning_modules import training
from lightning_modules.batching import TextsData, padded_rows
from lightning_modules.companion import announce, attach_companion, describe, save_into_checkpoint
from lightning_modules.encoders import PRESETS, EncoderSpec, build_classifier, fill_ngram_vocabulary
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import distillation_offline_hint, load_tokenizer, resolve_pretrained, vocab_tokens
from lightning_modules.losses import distillation_loss, hidden_state_loss
from lightning_modules.teacher_cache import (
    check_layer_map,
    check_same_teachers,
    existing_checkpoint,
    load_matching_teacher,
    teacher_batch_outputs,
)
from lightning_modules.teachers import CheckpointTeacher, LogitTeacher, TeacherData, ensemble_targets, teacher_summary
from lightning_modules.token_cache import TokenizedTexts, tokenize
from lightning_modules.vocab_pruning import PrunedVocab, check_prunable

PresetName = Literal["roberta_l4_h512", "mobilebert", "tiny"]  # the keys of encoders.PRESETS


def check_distillation_args(alpha: float, temperature: float, dropout: float, learning_rate: float,
                            pretrained: str | None, architecture: EncoderSpec | None, preset: str | None) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise PocketbertError(f"alpha must be in [0, 1] (the weight of the hard-label loss), got {alpha}")
    if temperature <= 0:
        raise PocketbertError(f"temperature must be positive, got {temperature}")
    training.check_training_args(dropout, learning_rate)
    if (pretrained is not None) + (architecture is not None) + (preset is not None) != 1:
        raise PocketbertError("give the student exactly one of model.init_args.pretrained, architecture or preset")
    if preset is not None and preset not in PRESETS:
        raise PocketbertError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}")


class DistillationModule(L.LightningModule):
    """A student classifier trained on hard labels and on a frozen teacher's softened logits.

    Loss: ``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher / T || student / T)``, plus
    ``hidden_weight * MSE(W student_hidden, teacher_hidden)`` over ``layer_map`` (TinyBERT) when given. The
    teacher's logits for the training texts are computed once and cached on disk, so epochs skip its forward pass
    (hidden-state matching needs the teacher every step). The teacher is never part of the student's checkpoint.
    With ``prune_vocab`` the student keeps only the training data's tokens; that pruned vocabulary is the one saved
    in its checkpoint and shipped. ``load_from_checkpoint(path, teacher_checkpoint=None)`` loads a trained student
    without its teacher.

    Args:
        teacher_checkpoint: The teacher: a pocketbert checkpoint (e.g. ``tb_logs/news16_cpu/latest/best.ckpt``);
            ``None`` when ``teachers`` names them all, or to load a trained student back for evaluation or export.
        teachers: More teachers (or all of them), each with a weight: ``lightning_modules.CheckpointTeacher``,
            ``lightning_modules.TfidfTeacher`` (the linear baseline, cross-fitted) or any class with the
            ``lightning_modules.LogitTeacher`` shape. With several teachers the targets are the weighted mean of their
            log-probabilities, each calibrated on the validation split; ``teacher_checkpoint`` counts with weight 1.
        label_names: Class names in id order; linked from the DataModule; must equal the teacher's.
        tokenizer: The student's tokenizer (vocab file, directory or hub name); linked from the DataModule. The
            teacher tokenizes the same texts with the vocabulary saved in its own checkpoint.
        max_length: Longest token sequence; linked from the DataModule.
        pretrained: Hub name or local directory of the student's pretrained weights (e.g.
            ``uer/chinese_roberta_L-4_H-512``). Give exactly one of ``pretrained``, ``architecture``, ``preset``.
        architecture: The student's shape, trained from scratch.
        preset: A named student shape from scratch: ``roberta_l4_h512``, ``mobilebert`` or ``tiny``.
        alpha: Weight of the hard-label cross-entropy; ``1 - alpha`` weighs the soft (teacher) loss.
        temperature: Softmax temperature of the soft loss (its gradients are rescaled by ``T^2``).
        layer_map: Hidden-state matching, student layer -> teacher layer (0 = embeddings), e.g. ``{2: 4, 4: 8}``;
            needs the teacher to use the student's tokenizer. Off when not given.
        hidden_weight: Weight of the hidden-state loss.
        teacher_cache: Cache the teacher's logits on disk (under the DataModule's ``cache_dir``); ``false`` runs
            the teacher on every batch.
        prune_vocab: Keep only the tokens of the training data (plus special tokens) in the student's vocabulary.
            Defaults to on for from-scratch students and off for pretrained ones.
        num_labels: Optional check: fails fast when the data's label count differs.
        dropout: Dropout of the student's hidden states and attention probabilities.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm).
        warmup_ratio: Fraction of the training steps spent warming the learning rate up linearly.
        teacher_batch_size: Batch size of the teacher when it computes the logit cache.
        trust_remote_code: Allow model code from the hub; off unless a recipe turns it on.
        linear_companion: When training ends, fit a linear model (an SVM or NB-SVM, alone or plus a Complement Naive
            Bayes, over TF-IDF) of the student's own tokens and bigrams into its graph
            (``export.ngram_bert.LinearCompanion``) and add its scores to the best checkpoint's logits, at the weight
            of the best validation accuracy (weight 0 switches it off); the SVM kind, C and members of the best
            validation accuracy, or of the best 5-fold accuracy on the training split below 1,000 validation rows.
            Needs an n-gram student. On news16 it lifts the student past the linear baseline (docs/quality.md).
    """

    def __init__(
        self,
        teacher_checkpoint: Path | None = None,
        teachers: list[LogitTeacher] | None = None,
        label_names: list[str] | None = None,
        tokenizer: str = "vocab/bert-base-chinese-vocab.txt",
        max_length: int = 128,
        # the student: exactly one of the three
        pretrained: str | None = None, architecture: EncoderSpec | None = None, preset: PresetName | None = None,
        alpha: float = 0.5,
        temperature: float = 2.0,
        layer_map: dict[int, int] | None = None,
        hidden_weight: float = 1.0,
        teacher_cache: bool = True,
        prune_vocab: bool | None = None,
        num_labels: int | None = None,
        # the student's training, as in TextClassifier
        dropout: float = 0.1, learning_rate: float = 5e-4, weight_decay: float = 0.01, warmup_ratio: float = 0.1,
        teacher_batch_size: int = 128,
        trust_remote_code: bool = False,
        linear_companion: bool = False,
    ) -> None:
        super().__init__()
        self.label_names = training.check_labels(label_names, num_labels)
        check_distillation_args(alpha, temperature, dropout, learning_rate, pretrained, architecture, preset)
        self.extra_teachers = list(teachers or [])
        if self.extra_teachers and (layer_map or not teacher_cache):
            raise PocketbertError("hidden-state matching (layer_map) and teacher_cache: false run one teacher on "
                                  "every batch; give only teacher_checkpoint, not teachers")
        # teachers are objects (a checkpoint teacher holds a model): the run's config.yaml records them, and the
        # checkpoint keeps their descriptions (on_save_checkpoint), so it loads with weights_only
        self.save_hyperparameters(ignore=["teachers"])
        with distillation_offline_hint():
            self.data_tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
            if pretrained is not None:
                resolve_pretrained(pretrained)  # fail fast offline, before the teacher is looked for
        self.tokenizer = self.data_tokenizer  # what ships: replaced by the pruned tokenizer when pruning
        # a missing teacher file is an error when fit starts (setup): a trained student is evaluated without it
        self.teacher, self.missing_teacher = load_matching_teacher(teacher_checkpoint, self.label_names)
        source = pretrained if pretrained is not None else architecture or PRESETS[str(preset)]
        with distillation_offline_hint():
            self.model: PreTrainedModel = build_classifier(source, tokenizer=self.data_tokenizer,
                                                           label_names=self.label_names, dropout=dropout,
                                                           trust_remote_code=trust_remote_code,
                                                           linear_companion=linear_companion)
        self.prune = pretrained is None if prune_vocab is None else prune_vocab
        if self.prune:
            check_prunable(self.data_tokenizer)
        self.pruned: PrunedVocab | None = None
        self.layer_map = dict(layer_map) if layer_map else None
        self.hidden_projection: nn.Linear | None = None
        if self.layer_map is not None and self.teacher is not None:
            check_layer_map(self.layer_map, self.model.config, self.teacher, self.data_tokenizer,
                            int(self.hparams["max_length"]))
            self.hidden_projection = nn.Linear(self.model.config.hidden_size, self.teacher.model.config.hidden_size)
        self.teacher_report: dict[str, Any] | None = None  # per teacher and ensemble: weight, scale, accuracies
        self._teacher_logits: torch.Tensor | None = None  # (train size, num_labels), on the training device
        self._teacher_tokens: TokenizedTexts | None = None  # the training texts in the teacher's vocabulary
        self._eval_tokens: dict[tuple[str, int], TokenizedTexts] = {}  # (split, id of its texts) -> pruned ids
        self.val_metrics = training.StageMetrics("val", self.label_names)
        self.test_metrics = training.StageMetrics("test", self.label_names)

    def check_teachers(self) -> None:
        """A one-line "train the teacher first" error for a teacher checkpoint that does not exist: the CLI calls it
        before fit starts (before the data is tokenized), ``setup`` again for fits without the CLI."""
        paths = [self.missing_teacher, *(teacher.checkpoint for teacher in self.extra_teachers
                                        if isinstance(teacher, CheckpointTeacher))]
        for path in paths:
            if path is not None:
                existing_checkpoint(path)

    # ---- data: pruning and the teacher's inputs ------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        self.check_teachers()
        if self.teacher is None and not self.extra_teachers:
            raise PocketbertError("training a student needs model.init_args.teacher_checkpoint or teachers")
        datamodule = self._datamodule()
        if datamodule is None or "train" not in datamodule.texts:
            raise PocketbertError("DistillationModule trains with a NewsDataModule (it looks teacher inputs up by "
                                  "the batch's `index` in datamodule.texts); pass datamodule=...")
        texts, cache_dir = datamodule.texts, datamodule.cache_dir
        fill_ngram_vocabulary(self.model, datamodule)  # before pruning: it reads the data's ids
        if self.prune and self.pruned is None:
            self._apply_pruning(PrunedVocab.from_training_ids(self.data_tokenizer,
                                                              datamodule.datasets["train"].tokens.ids))
        device = self.trainer.strategy.root_device
        if self.teacher is not None and (self.layer_map is not None or not self.hparams["teacher_cache"]):
            self.teacher.to(device)
            rank_zero_info("the teacher runs on every batch (layer_map or teacher_cache: false)")
            if self.layer_map is None:
                self._teacher_tokens = tokenize(texts["train"], self.teacher.tokenizer, self.teacher.max_length,
                                                cache_dir, desc="tokenizing train for the teacher")
            return
        members: list[LogitTeacher] = [*self.extra_teachers]
        if self.teacher is not None:
            members.insert(0, CheckpointTeacher.of(self.teacher, batch_size=self.hparams["teacher_batch_size"]))
        data = TeacherData(texts={split: texts[split] for split in ("train", "val", "test") if split in texts},
                           labels={split: dataset.labels for split, dataset in datamodule.datasets.items()},
                           label_names=self.label_names, cache_dir=cache_dir, device=device)
        targets = ensemble_targets(members, data)
        self._teacher_logits = targets.logits["train"].to(device)
        self.teacher_report = targets.report
        rank_zero_info(teacher_summary(targets.report))

    def _apply_pruning(self, pruned: PrunedVocab, report: bool = True) -> None:
        pruned.prune_embeddings(self.model, report=report)
        self.pruned = pruned
        self.tokenizer = pruned.tokenizer
        self._eval_tokens.clear()

    def _student_inputs(self, batch: dict[str, torch.Tensor], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch in the student's ids: remapped when pruned (exact for training texts, whose tokens all
        survived), and for evaluation re-tokenized with the pruned vocabulary, exactly as the shipped model sees it."""
        if self.pruned is None:
            return batch["input_ids"], batch["attention_mask"]
        tokens = self._pruned_eval_tokens(split) if split != "train" else None
        if tokens is not None:
            input_ids, attention_mask = padded_rows(tokens, batch["index"].tolist(), int(self.tokenizer.pad_token_id))
            return input_ids.to(self.device), attention_mask.to(self.device)
        return self.pruned.remap(batch["input_ids"]), batch["attention_mask"]

    def _datamodule(self) -> TextsData | None:
        datamodule = getattr(self._trainer, "datamodule", None)
        return datamodule if isinstance(datamodule, TextsData) else None

    def _pruned_eval_tokens(self, split: str) -> TokenizedTexts | None:
        datamodule = self._datamodule()
        texts = datamodule.texts.get(split) if datamodule is not None else None
        if datamodule is None or texts is None:
            return None  # no texts to re-tokenize (bare dataloaders): the remapped ids are the best we have
        key = (split, id(texts))
        if key not in self._eval_tokens:
            self._eval_tokens[key] = tokenize(texts, self.tokenizer, int(self.hparams["max_length"]),
                                              datamodule.cache_dir, desc=f"tokenizing {split}")
        return self._eval_tokens[key]

    def _teacher_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Teacher logits (batch, num_labels), and its hidden states when matching them."""
        if self._teacher_logits is not None:
            return self._teacher_logits[batch["index"]], None
        if self.teacher is None:
            raise PocketbertError("training a student needs model.init_args.teacher_checkpoint")
        return teacher_batch_outputs(self.teacher, batch, self._teacher_tokens,
                                     hidden_states=self.layer_map is not None, device=self.device)

    # ---- steps ---------------------------------------------------------------------------------------------------
    @override
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_labels) for ids of the student's (possibly pruned) vocabulary."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        input_ids, attention_mask = self._student_inputs(batch, "train")
        output = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            output_hidden_states=self.layer_map is not None)
        teacher_logits, teacher_hidden = self._teacher_outputs(batch)
        losses = distillation_loss(output.logits.float(), teacher_logits.float(), batch["labels"],
                                   alpha=self.hparams["alpha"], temperature=self.hparams["temperature"])
        loss = losses.total
        parts = {"train_hard_loss": losses.hard, "train_soft_loss": losses.soft}
        if teacher_hidden is not None and self.layer_map is not None and self.hidden_projection is not None:
            hidden = hidden_state_loss(output.hidden_states, teacher_hidden, self.layer_map, self.hidden_projection,
                                       attention_mask)
            loss = loss + self.hparams["hidden_weight"] * hidden
            parts["train_hidden_loss"] = hidden
        training.raise_if_not_finite(loss, self.global_step)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(input_ids))
        self.log_dict(parts, batch_size=len(input_ids))
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_metrics.step(self, self(*self._student_inputs(batch, "val")), batch["labels"])

    @override
    def on_validation_epoch_end(self) -> None:
        self.val_metrics.epoch_end(self)

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_metrics.step(self, self(*self._student_inputs(batch, "test")), batch["labels"])

    @override
    def on_test_epoch_end(self) -> None:
        self.test_metrics.epoch_end(self)

    @override
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        # NewsDataModule predicts on its test split.
        return training.prediction(self(*self._student_inputs(batch, "test")), batch["index"])

    @override
    def configure_optimizers(self) -> Any:
        # the student and the hidden-state projection; the teacher is no submodule
        return training.adamw_with_linear_warmup(self, list(self.named_parameters()))

    @override
    def on_fit_start(self) -> None:
        # the teachers' own figures beside the run's (the quickstart summary reads them). trainer.log_dir is a
        # collective under DDP (rank 0 broadcasts it): every rank reads it, or rank 0 waits for ever
        log_dir = self.trainer.log_dir
        if self.teacher_report is not None and self.trainer.is_global_zero and log_dir:
            write_json(Path(log_dir) / "teachers.json", self.teacher_report)

    @override
    def on_train_end(self) -> None:
        if self.hparams.get("linear_companion") and not self.trainer.interrupted:
            self._attach_companion()

    def _model_unknown_id(self) -> int:
        """[UNK]'s id in the model's (possibly pruned) vocabulary."""
        unknown = torch.tensor([int(self.tokenizer.unk_token_id or 0)])
        return int((self.pruned.remap(unknown) if self.pruned is not None else unknown)[0])

    def _attach_companion(self) -> None:
        """Fit the linear companion into the best checkpoint's student (and that file), before the exports read it."""
        datamodule = self._datamodule()
        if datamodule is None or "val" not in datamodule.datasets:
            raise PocketbertError("linear_companion fits on the training split and weighs on the validation split: "
                                  "train with a NewsDataModule that has both")
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "") or ""
        if best and self.trainer.is_global_zero:  # the other ranks receive rank 0's student below
            state = torch.load(best, map_location=self.device, weights_only=True)["state_dict"]
            self.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()
                                        if k.startswith("model.")})
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank reads it (see on_fit_start)
        fitted: dict[str, torch.Tensor] | None = None
        if self.trainer.is_global_zero:  # one fit; the other ranks take its result below
            train, val = datamodule.datasets["train"], datamodule.datasets["val"]
            val_tokens = self._pruned_eval_tokens("val") if self.pruned is not None else None  # in the pruned ids
            rank_zero_info(announce(len(train.labels), len(val.labels)))
            report = attach_companion(self.model, train.tokens, train.labels,
                                      val.tokens if val_tokens is None else val_tokens, val.labels,
                                      pad_id=int(self.tokenizer.pad_token_id or 0), unknown_id=self._model_unknown_id(),
                                      remap_train=self.pruned.remap if self.pruned is not None else None)
            rank_zero_info(describe(report))
            if best:
                save_into_checkpoint(Path(best), self.model)
            if log_dir:
                write_json(Path(log_dir) / "companion.json", asdict(report))
        if self.trainer.world_size > 1:  # every rank tests rank 0's student + companion, not one of its own
            if self.trainer.is_global_zero:  # a copy only when there are other ranks to send it to
                fitted = {key: value.detach().cpu() for key, value in self.model.state_dict().items()}
            fitted = self.trainer.strategy.broadcast(fitted, src=0)
            if not self.trainer.is_global_zero and fitted is not None:
                self.model.load_state_dict(fitted)

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the vocab saved is the pruned one: the shipped model's ids index it
        training.save_export_info(self, checkpoint)
        checkpoint["pocketbert"]["distillation"] = {
            "teacher": str(self.teacher.path.resolve()) if self.teacher is not None else None,  # not the `latest` link
            "teacher_fingerprint": self.teacher.fingerprint if self.teacher is not None else None,
            "teacher_fingerprints": self.teacher_fingerprints(),
            "teachers": self.teacher_report,
            "vocab_pruned": self.pruned is not None,
        }

    def teacher_fingerprints(self) -> list[str]:
        """The fingerprints of every checkpoint teacher, ``teacher_checkpoint`` first (others in ``teachers`` order)."""
        found = [self.teacher.fingerprint] if self.teacher is not None else []
        return found + [member.teacher.fingerprint for member in self.extra_teachers
                        if isinstance(member, CheckpointTeacher)]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("pocketbert", {}).get("distillation")
        trainer = self._trainer
        if saved and trainer is not None and trainer.state.fn == TrainerFn.FITTING:  # resuming, not evaluating
            check_same_teachers(saved, self.teacher_fingerprints())
        # Runs before the weights load: shrink the embedding to the checkpoint's pruned vocabulary first.
        vocab = list(checkpoint.get("pocketbert", {}).get("vocab") or [])
        if vocab and vocab != vocab_tokens(self.tokenizer):
            if self.pruned is not None:
                raise PocketbertError("the checkpoint's vocabulary differs from the one pruned from this training "
                                      "data; resume with the data it was trained on")
            self._apply_pruning(PrunedVocab.from_tokens(self.data_tokenizer, vocab), report=False)
        if self.hidden_projection is None:  # loaded without a teacher: the training-only projection is not needed
            for key in [k for k in checkpoint["state_dict"] if k.startswith("hidden_projection.")]:
                del checkpoint["state_dict"][key]
