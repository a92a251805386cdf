"""Self-supervised pretraining: a masked language model over unlabeled text, saved as a Hugging Face model directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from transformers import AutoModelForMaskedLM, PreTrainedModel
from typing_extensions import override

from export.assets import write_vocab
from export.files import atomic_path, write_json
from lightning_modules.encoders import EncoderSpec, build_masked_lm, fill_ngram_vocabulary
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import load_tokenizer, resolve_pretrained, vocab_tokens
from lightning_modules.training import adamw_with_linear_warmup, check_training_args, raise_if_not_finite

PRETRAINED_DIR = "pretrained"


def plain(value: Any) -> Any:
    """JSON-ready form of the dataclasses and paths in hyperparameters and reports."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)  # <run dir>/pretrained: what `pretrained:` of a classifier recipe names


class MaskedLMPretraining(L.LightningModule):
    """BERT-style masked-language-model pretraining, from scratch or continued from a pretrained model.

    Of the real tokens (not [CLS]/[SEP]/[PAD]), ``mask_probability`` are chosen; of those 80% become [MASK], 10% a
    random token and 10% stay, and the model predicts the original token at every chosen position (the loss is
    computed there only). With ``whole_word_masking`` a word's WordPiece continuations (``##...``) are chosen with it.
    At fit end the encoder is written as a Hugging Face model directory, ``<run dir>/pretrained`` (config, weights,
    ``vocab.txt``, tokenizer files): a ``TextClassifier`` or ``DistillationModule`` loads it with ``pretrained:
    <dir>`` (the path a hub model takes). Its vocabulary is the data tokenizer's, checked when loaded.

    Args:
        label_names: Linked from the DataModule (unlabeled text: empty); unused.
        tokenizer: Tokenizer (vocab file, directory or hub name); linked from the DataModule.
        max_length: Longest token sequence; linked from the DataModule.
        pretrained: Continue pretraining this model (hub name or local directory), e.g. ``bert-base-chinese`` on
            your own headlines (domain-adaptive pretraining). Give exactly one of ``pretrained``, ``architecture``.
        architecture: Encoder shape trained from scratch (n-gram embeddings included when it has ``ngram_orders``).
        mask_probability: Share of real tokens the model must predict.
        whole_word_masking: Choose whole WordPiece words (a token with its ``##`` continuations) together.
        dropout: Dropout of hidden states and attention probabilities.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm).
        warmup_ratio: Fraction of the training steps spent warming the learning rate up linearly.
        trust_remote_code: Allow model code from the hub; off unless a recipe turns it on.
    """

    def __init__(
        self,
        label_names: list[str] | None = None,
        tokenizer: str = "vocab/bert-base-chinese-vocab.txt",
        max_length: int = 128,
        pretrained: str | None = None,
        architecture: EncoderSpec | None = None,
        mask_probability: float = 0.15,
        whole_word_masking: bool = False,
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        check_training_args(dropout, learning_rate)
        if not 0.0 < mask_probability < 1.0:
            raise PocketbertError(f"mask_probability must be in (0, 1), got {mask_probability}")
        if (pretrained is None) == (architecture is None):
            raise PocketbertError("give MaskedLMPretraining exactly one of model.init_args.pretrained or architecture")
        self.save_hyperparameters(ignore=["label_names"])
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        self.model: PreTrainedModel
        if pretrained is not None:
            resolved, local_only = resolve_pretrained(pretrained)
            self.model = AutoModelForMaskedLM.from_pretrained(resolved, local_files_only=local_only,
                                                              trust_remote_code=trust_remote_code,
                                                              hidden_dropout_prob=dropout)
            self.model.train()  # from_pretrained returns eval mode, which Lightning would keep: dropout off
            embeddings: Any = self.model.get_input_embeddings()
            rows = int(embeddings.num_embeddings)
            if rows < len(self.tokenizer):
                raise PocketbertError(f"{pretrained} has {rows} token "
                                      f"embeddings but the tokenizer {len(self.tokenizer)} tokens; use its tokenizer")
        else:
            assert architecture is not None
            self.model = build_masked_lm(architecture, vocab_size=len(self.tokenizer),
                                         pad_token_id=int(self.tokenizer.pad_token_id or 0), dropout=dropout)
        if getattr(self.model, "cls", None) is None:
            raise PocketbertError(f"masked-LM pretraining supports BERT-style models with a `cls` head, got "
                                  f"{type(self.model).__name__}")
        vocab = vocab_tokens(self.tokenizer)
        self.maskable: torch.Tensor
        self.continuation: torch.Tensor
        special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))
        self.register_buffer("maskable", torch.ones(len(vocab), dtype=torch.bool).index_fill_(0, special, False),
                             persistent=False)  # (vocab,): tokens that may be chosen for prediction
        self.register_buffer("continuation", torch.tensor([token.startswith("##") for token in vocab]),
                             persistent=False)  # (vocab,): WordPiece continuations of the previous token
        self.random_low = int(special.max()) + 1  # random replacements are drawn from the ordinary tokens

    # ---- masking -------------------------------------------------------------------------------------------------
    def mask_tokens(self, input_ids: torch.Tensor, generator: torch.Generator | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(corrupted ids, chosen)``, both (batch, seq): BERT's 80/10/10 corruption of the chosen positions."""
        def uniform() -> torch.Tensor:
            return torch.rand(input_ids.shape, generator=generator, device=input_ids.device)

        maskable = self.maskable[input_ids]
        chosen = (uniform() < self.hparams["mask_probability"]) & maskable
        if self.hparams["whole_word_masking"]:
            continuation = self.continuation[input_ids] & maskable
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            word_start = torch.where(continuation, torch.zeros_like(positions), positions).cummax(dim=1).values
            chosen = torch.gather(chosen & ~continuation, 1, word_start) & maskable  # a word's pieces follow its start
        draw = uniform()
        corrupted = input_ids.clone()
        corrupted[chosen & (draw < 0.8)] = int(self.tokenizer.mask_token_id)  # type: ignore[arg-type]
        replace = chosen & (draw >= 0.8) & (draw < 0.9)
        random_ids = torch.randint(self.random_low, len(self.maskable), input_ids.shape, generator=generator,
                                   device=input_ids.device)
        corrupted[replace] = random_ids[replace]
        return corrupted, chosen

    def masked_lm_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss, correct predictions, predicted positions): the vocabulary head runs only where tokens were chosen."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        corrupted, chosen = self.mask_tokens(input_ids, generator)
        if not bool(chosen.any()):  # a batch of very short texts: predict one token so the loss is defined
            chosen = self.maskable[input_ids] & (torch.cumsum(self.maskable[input_ids].int(), dim=1) == 1)
        hidden = self.model.base_model(input_ids=corrupted, attention_mask=attention_mask).last_hidden_state
        head = cast(torch.nn.Module, self.model.cls)  # the masked-LM head: hidden -> vocabulary logits
        logits = head(hidden[chosen]).float()  # (chosen, vocab)
        targets = input_ids[chosen]
        loss = F.cross_entropy(logits, targets)
        return loss, (logits.argmax(dim=-1) == targets).sum(), int(targets.numel())

    # ---- steps ---------------------------------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            fill_ngram_vocabulary(self.model, getattr(self.trainer, "datamodule", None))

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, count = self.masked_lm_loss(batch)
        raise_if_not_finite(loss, self.global_step)
        self.log("train_loss", loss, prog_bar=True, batch_size=count)
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        # the same positions are masked every epoch, so held-out figures compare across epochs
        generator = torch.Generator(device=batch["input_ids"].device).manual_seed(batch_idx)
        loss, correct, count = self.masked_lm_loss(batch, generator)
        self.log(f"{stage}_mlm_loss", loss, prog_bar=True, batch_size=count, sync_dist=True)
        self.log(f"{stage}_mlm_acc", correct.float() / max(count, 1), prog_bar=True, batch_size=count, sync_dist=True)

    @override
    def configure_optimizers(self) -> Any:
        return adamw_with_linear_warmup(self, list(self.model.named_parameters()))

    # ---- the product: a Hugging Face model directory -------------------------------------------------------------
    @override
    def on_fit_end(self) -> None:
        if self.trainer.interrupted:
            return
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        self.save_pretrained_dir(run_dir / PRETRAINED_DIR, getattr(self.trainer, "datamodule", None))

    @rank_zero_only
    def save_pretrained_dir(self, path: Path, datamodule: Any = None) -> None:
        """``config.json`` + ``model.safetensors`` + tokenizer files (``vocab.txt``) + ``pretraining.json``."""
        with atomic_path(path) as tmp:
            self.model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            write_vocab(vocab_tokens(self.tokenizer), tmp / "vocab.txt")  # the vocabulary check reads it
            report = getattr(datamodule, "report", None)
            write_json(tmp / "pretraining.json", {
                "hyperparameters": json.loads(json.dumps(dict(self.hparams), default=plain)),
                "text": plain(report) if report is not None else None,
                "steps": self.trainer.global_step,
                "final_val": {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val_")},
            })
        rank_zero_info(f"pretrained model written to {path} (use it with model.init_args.pretrained: {path})")
