"""Vocabulary pruning: keep the tokens the training data uses (plus special tokens) and shrink the embedding to them.

A Chinese BERT vocabulary has 21,128 tokens; a headline corpus uses a few thousand of them. For a small student the
word embedding is most of the model, so pruning it shrinks the app's download severalfold. The pruned vocabulary
is saved as the model's vocabulary (``checkpoint["pocketbert"]["vocab"]``) and the shipped model's ids index it.

WordPiece picks the longest matching piece, so a text whose pieces all survived pruning tokenizes with the pruned
vocabulary exactly as with the full one, mapped; that is why the training ids can be remapped instead of
re-tokenized. Unseen text can differ (a dropped word may split into kept pieces), so evaluation re-tokenizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import BertTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lightning_modules.errors import PocketbertError
from lightning_modules.hub import tokenizer_settings, vocab_tokens, wordpiece_tokenizer


@dataclass
class PrunedVocab:
    tokens: list[str]  # the pruned vocabulary in (new) id order
    kept_ids: torch.Tensor  # (pruned size,) the full-vocabulary id of each kept token, ascending
    id_map: torch.Tensor  # (full size,) full id -> pruned id; dropped tokens -> pruned [UNK]
    tokenizer: PreTrainedTokenizerBase  # WordPiece over ``tokens`` with the full tokenizer's settings

    def remap(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary ids (any shape) in the pruned vocabulary: exact for training texts, whose tokens all
        survived pruning (unseen text is re-tokenized instead, see the module docstring)."""
        if self.id_map.device != input_ids.device:
            self.id_map = self.id_map.to(input_ids.device)
        return self.id_map[input_ids]

    @classmethod
    def from_training_ids(cls, tokenizer: PreTrainedTokenizerBase, used_ids: torch.Tensor) -> PrunedVocab:
        """Keep the ids in ``used_ids`` (the training data's token ids) and every special token, in their old order."""
        check_prunable(tokenizer)
        kept = torch.unique(torch.cat([used_ids.flatten().long(), torch.tensor(tokenizer.all_special_ids)]))
        return _pruned(tokenizer, kept)

    @classmethod
    def from_tokens(cls, tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> PrunedVocab:
        """The pruning a checkpoint recorded (its vocabulary), re-derived against the full ``tokenizer``."""
        check_prunable(tokenizer)
        vocab = tokenizer.get_vocab()
        missing = [token for token in tokens if token not in vocab]
        if missing:
            raise PocketbertError(f"the checkpoint's vocabulary has tokens {missing[:5]} that the tokenizer lacks; "
                                  "load it with the tokenizer it was trained with")
        kept = torch.tensor([vocab[token] for token in tokens])
        if not bool((kept[1:] > kept[:-1]).all()):
            raise PocketbertError("the checkpoint's pruned vocabulary is not in the tokenizer's id order")
        return _pruned(tokenizer, kept)

    def prune_embeddings(self, model: PreTrainedModel, *, report: bool = True) -> None:
        """Keep only the kept tokens' rows of ``model``'s word embedding (in place), logging the saving."""
        old = model.get_input_embeddings()
        assert isinstance(old, nn.Embedding)
        if old.num_embeddings != self.id_map.numel():
            raise PocketbertError(f"the model has {old.num_embeddings} token embeddings but the tokenizer "
                                  f"{self.id_map.numel()} tokens; they must match to prune")
        before = sum(p.numel() for p in model.parameters())
        pad_id = model.config.pad_token_id
        new_pad = int(self.id_map[pad_id]) if pad_id is not None else None
        new = nn.Embedding(len(self.tokens), old.embedding_dim, padding_idx=new_pad, device=old.weight.device,
                           dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[self.kept_ids.to(old.weight.device)])
        model.set_input_embeddings(new)
        ngram = getattr(getattr(model.base_model, "embeddings", None), "ngram", None)
        if ngram is not None:  # hashed n-grams follow the original ids, so their table rows stay valid
            ngram.keep_tokens(self.kept_ids)
        companion = getattr(model.base_model, "companion", None)
        if companion is not None:  # its token table is indexed by the model's ids
            companion.keep_tokens(self.kept_ids)
        model.config.vocab_size = len(self.tokens)
        model.config.pad_token_id = new_pad
        after = sum(p.numel() for p in model.parameters())
        if report:
            rank_zero_info(
                f"vocabulary pruned to the training data's tokens: {self.id_map.numel():,} -> {len(self.tokens):,} "
                f"tokens; parameters {before / 1e6:.2f}M -> {after / 1e6:.2f}M ({100 * (1 - after / before):.0f}% "
                f"smaller, fp32 {4 * before / 2**20:.1f} MiB -> {4 * after / 2**20:.1f} MiB)"
            )


def check_prunable(tokenizer: PreTrainedTokenizerBase) -> None:
    if not isinstance(tokenizer, BertTokenizer) or tokenizer.unk_token_id is None:
        raise PocketbertError(f"vocabulary pruning needs a WordPiece BertTokenizer with an [UNK] token, got "
                              f"{type(tokenizer).__name__}; set model.init_args.prune_vocab: false")


def _pruned(tokenizer: PreTrainedTokenizerBase, kept: torch.Tensor) -> PrunedVocab:
    full_tokens = vocab_tokens(tokenizer)
    tokens = [full_tokens[i] for i in kept.tolist()]
    id_map = torch.full((len(full_tokens),), -1, dtype=torch.long)
    id_map[kept] = torch.arange(len(kept))
    id_map[id_map < 0] = int(id_map[int(tokenizer.unk_token_id)])  # type: ignore[arg-type]
    pruned_tokenizer = wordpiece_tokenizer(tokens, tokenizer_settings(tokenizer))
    return PrunedVocab(tokens, kept, id_map, pruned_tokenizer)

