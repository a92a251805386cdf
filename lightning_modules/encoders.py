"""Sequence classifiers built from an architecture spec (from scratch) or loaded with ``from_pretrained``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from lightning.pytorch.utilities import rank_zero_info
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    MobileBertConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from export.ngram_bert import HashedNgramEmbedding, NgramBertConfig
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import load_tokenizer, read_vocab_file, resolve_pretrained, vocab_tokens


@dataclass
class EncoderSpec:
    """A BERT-style encoder trained from scratch.

    Args:
        num_layers: Transformer layers.
        hidden_size: Hidden width; must be divisible by ``num_heads``.
        num_heads: Attention heads.
        intermediate_size: Feed-forward width.
        max_position_embeddings: Longest sequence the position embeddings cover.
        kind: ``bert`` (also the shape of ``uer/chinese_roberta_*``) or ``mobilebert`` (bottleneck layers).
        embedding_size: MobileBERT's embedding width (ignored for ``bert``).
        intra_bottleneck_size: MobileBERT's bottleneck width (ignored for ``bert``).
        ngram_orders: Hashed n-gram embeddings added to the token embeddings, e.g. ``[2]`` (bigrams) or ``[2, 3]``;
            computed inside the model from the input ids, so apps keep the same ``vocab.txt`` (``bert`` only;
            see ``export/ngram_bert.py``). Off when not given.
        ngram_buckets: Hash buckets per n-gram order.
        ngram_size: Width of the n-gram table (projected to ``hidden_size`` when smaller); defaults to
            ``hidden_size``.
        ngram_dropout: Probability of dropping a position's n-gram vector in training (regularizes the table).
        ngram_vocabulary: When positive, the n-gram table holds the ``ngram_vocabulary`` most frequent bigrams of
            the training texts (counted when training starts), a row each, and one row for every other bigram,
            instead of ``ngram_buckets`` hash buckets: no frequent bigram shares its row (needs ``ngram_orders:
            [2]``). 0: hashing.
        pooling: What the classifier's pooler summarizes: ``cls`` (BERT's [CLS] token) or ``mean`` (the mean of the
            real tokens' last hidden states; better for small models on little data). ``mean`` needs n-grams on.
        ngram_bag: Also give the classifier the mean of the text's n-gram vectors (a fastText-like bag of n-grams
            beside the transformer); needs n-grams on.
    """

    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    kind: Literal["bert", "mobilebert"] = "bert"
    embedding_size: int = 128
    intra_bottleneck_size: int = 128
    ngram_orders: list[int] | None = None
    ngram_buckets: int = 20000
    ngram_size: int | None = None
    ngram_dropout: float = 0.0
    ngram_vocabulary: int = 0
    pooling: Literal["cls", "mean"] = "cls"
    ngram_bag: bool = False


PRESETS: dict[str, EncoderSpec] = {
    # Shaped like uer/chinese_roberta_L-4_H-512 (a BERT architecture with RoBERTa-style pretraining).
    "roberta_l4_h512": EncoderSpec(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    # Shaped like google/mobilebert-uncased: 24 thin bottleneck layers.
    "mobilebert": EncoderSpec(num_layers=24, hidden_size=512, num_heads=4, intermediate_size=512,
                              kind="mobilebert", embedding_size=128, intra_bottleneck_size=128),
    "tiny": EncoderSpec(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
}


def build_from_spec(
    spec: EncoderSpec, *, vocab_size: int, pad_token_id: int, label_names: list[str], dropout: float,
    linear_companion: bool = False,
) -> PreTrainedModel:
    """A randomly initialized classifier of shape ``spec``."""
    extra = {"linear_companion": True} if linear_companion else {}
    config = encoder_config(spec, vocab_size=vocab_size, pad_token_id=pad_token_id, dropout=dropout,
                            num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                            label2id={name: i for i, name in enumerate(label_names)}, **extra)
    return AutoModelForSequenceClassification.from_config(config)


def build_classifier(
    source: str | EncoderSpec, *, tokenizer: PreTrainedTokenizerBase, label_names: list[str], dropout: float,
    trust_remote_code: bool = False, linear_companion: bool = False,
) -> PreTrainedModel:
    """The classifier a LightningModule trains: ``source`` is a pretrained model (hub name or local directory,
    loaded with a fresh head and checked against ``tokenizer``) or an ``EncoderSpec`` built from scratch over
    ``tokenizer``'s vocabulary. ``linear_companion`` adds an (unfitted) :class:`export.ngram_bert.LinearCompanion`."""
    if isinstance(source, EncoderSpec):
        model = build_from_spec(source, vocab_size=len(tokenizer), pad_token_id=int(tokenizer.pad_token_id or 0),
                                label_names=label_names, dropout=dropout, linear_companion=linear_companion)
    else:
        model = load_pretrained(source, label_names=label_names, dropout=dropout, tokenizer=tokenizer,
                                trust_remote_code=trust_remote_code, linear_companion=linear_companion)
    if linear_companion and getattr(model.base_model, "companion", None) is None:
        raise PocketbertError(f"linear_companion needs an n-gram student (model_type ngram_bert), got model_type "
                              f"{model.config.model_type!r}: set architecture.ngram_orders, or linear_companion: false")
    return model


def build_masked_lm(spec: EncoderSpec, *, vocab_size: int, pad_token_id: int, dropout: float) -> PreTrainedModel:
    """A randomly initialized masked language model of shape ``spec`` (its encoder is what pretraining trains)."""
    config = encoder_config(spec, vocab_size=vocab_size, pad_token_id=pad_token_id, dropout=dropout)
    return AutoModelForMaskedLM.from_config(config)


def encoder_config(spec: EncoderSpec, *, vocab_size: int, pad_token_id: int, dropout: float,
                   **extra: Any) -> PretrainedConfig:
    """The Hugging Face config of ``spec``: ``bert``, ``mobilebert``, or ``ngram_bert`` when n-grams are on."""
    if spec.hidden_size % spec.num_heads:
        raise PocketbertError(f"hidden_size {spec.hidden_size} is not divisible by num_heads {spec.num_heads}")
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "pad_token_id": pad_token_id,
        **extra,
    }
    if spec.ngram_orders:
        if spec.kind != "bert":
            raise PocketbertError(f"ngram_orders needs kind: bert, got kind: {spec.kind}")
        try:
            return NgramBertConfig(ngram_orders=list(spec.ngram_orders), ngram_buckets=spec.ngram_buckets,
                                   ngram_size=spec.ngram_size, ngram_dropout=spec.ngram_dropout,
                                   ngram_vocabulary=spec.ngram_vocabulary, pooling=spec.pooling,
                                   ngram_bag=spec.ngram_bag, **common)
        except ValueError as err:
            raise PocketbertError(f"architecture: {err}") from None
    if spec.pooling != "cls" or spec.ngram_bag:
        raise PocketbertError("pooling: mean and ngram_bag need hashed n-grams (set architecture.ngram_orders)")
    if spec.kind == "mobilebert":
        return MobileBertConfig(embedding_size=spec.embedding_size, intra_bottleneck_size=spec.intra_bottleneck_size,
                                **common)
    return BertConfig(**common)


# Texts whose ids differ between tokenizers that share a vocabulary but not their settings: Latin case, accents,
# full-width forms, digits, Chinese punctuation, an emoji ([UNK]).
SAMPLE_TEXTS = ["iPhone 15 Pro发布，售价7999元！", "Café Résumé naïve ÜBER", "ＮＢＡ总决赛：勇士ｖｓ凯尔特人",
                "“双引号”与《书名号》", "今天天气很好😀", "中国队夺冠"]


def load_pretrained(
    name_or_path: str, *, label_names: list[str], dropout: float, tokenizer: PreTrainedTokenizerBase | None = None,
    trust_remote_code: bool = False, linear_companion: bool = False,
) -> PreTrainedModel:
    """``AutoModelForSequenceClassification.from_pretrained`` with a fresh head for ``label_names``.

    The model must read the data tokenizer's ids: its token embeddings must cover them, its own tokenizer (when it
    ships one) must give the same ids on sample texts, and a local ``vocab.txt`` must match token for token. Only
    the classification head may differ in shape from the pretrained weights (it is re-initialized); any other
    mismatched weight would be silently re-initialized, so it stops the run.
    """
    resolved, local_only = resolve_pretrained(name_or_path)
    if tokenizer is not None:
        check_same_vocabulary(Path(resolved), tokenizer)
        config = AutoConfig.from_pretrained(resolved, local_files_only=local_only, trust_remote_code=trust_remote_code)
        check_tokenizer_fits(name_or_path, resolved, int(config.vocab_size), tokenizer,
                             local_only=local_only, trust_remote_code=trust_remote_code)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        resolved,
        local_files_only=local_only,
        trust_remote_code=trust_remote_code,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        hidden_dropout_prob=dropout,
        ignore_mismatched_sizes=True,  # the head: a new label count
        output_loading_info=True,
        **cast(dict[str, Any], {"linear_companion": True} if linear_companion else {}),
    )
    prefix = f"{model.base_model_prefix}."
    encoder = sorted(key for key, *_ in info.get("mismatched_keys", ()) if key.startswith(prefix))
    if encoder:
        key, saved, wanted = next(item for item in info["mismatched_keys"] if item[0] == encoder[0])
        raise PocketbertError(f"the pretrained model {name_or_path} has weights of another shape than its config "
                              f"builds ({key}: {tuple(saved)} saved, {tuple(wanted)} expected; {len(encoder)} such "
                              "weights); only the classification head may differ: fix the model's config.json")
    # from_pretrained returns the model in eval mode, and Lightning keeps each module's mode when fit starts: left so,
    # a pretrained student would train with its dropout off
    return model.train()


def check_tokenizer_fits(name: str, resolved: str, vocab_size: int, tokenizer: PreTrainedTokenizerBase, *,
                         local_only: bool, trust_remote_code: bool) -> None:
    """Raise unless the model's embeddings cover the data tokenizer's ids and the model's own tokenizer (if any)
    gives the same ids on :data:`SAMPLE_TEXTS`."""
    own = _own_tokenizer(resolved, local_only=local_only, trust_remote_code=trust_remote_code)
    if len(tokenizer) > vocab_size or (own is None and len(tokenizer) != vocab_size):
        raise PocketbertError(f"the pretrained model {name} has {vocab_size} token embeddings but the data tokenizer "
                              f"has {len(tokenizer)} tokens; set data.init_args.tokenizer to the model's tokenizer "
                              f"({name})")
    if own is None:
        return
    for text in SAMPLE_TEXTS:
        theirs, ours = own(text)["input_ids"], tokenizer(text)["input_ids"]
        if list(theirs) != list(ours):
            raise PocketbertError(f"the pretrained model {name}'s tokenizer gives other ids than the data tokenizer "
                                  f"(for {text!r}: {list(theirs)[:8]} vs {list(ours)[:8]}); set "
                                  f"data.init_args.tokenizer to {name}")


def _own_tokenizer(resolved: str, *, local_only: bool, trust_remote_code: bool) -> PreTrainedTokenizerBase | None:
    """The tokenizer a pretrained model ships with (None when it ships none)."""
    folder = Path(resolved)
    if folder.is_dir():
        if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            return None
        return load_tokenizer(folder, trust_remote_code=trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(resolved, local_files_only=local_only,
                                             trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # a hub model without tokenizer files
        return None


def check_same_vocabulary(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise unless ``model_dir/vocab.txt`` (when there is one) lists exactly ``tokenizer``'s tokens in id order."""
    vocab_file = model_dir / "vocab.txt"
    if not vocab_file.is_file():
        return
    theirs = list(read_vocab_file(vocab_file))
    ours = vocab_tokens(tokenizer)
    if theirs != ours:
        differs = next((i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b), min(len(theirs),
                                                                                                        len(ours)))
        raise PocketbertError(f"the pretrained model {model_dir} was trained with another vocabulary ({len(theirs)} "
                              f"tokens) than the data tokenizer ({len(ours)} tokens; first difference at id {differs})"
                              f"; set data.init_args.tokenizer to {model_dir} or pretrain with the data's tokenizer")


def fill_ngram_vocabulary(model: PreTrainedModel, datamodule: Any) -> None:
    """Count the training texts' bigrams into a model built with ``ngram_vocabulary`` that has none yet (a model
    from an architecture; a pretrained one keeps the vocabulary it was pretrained with). Call it before pruning the
    token vocabulary: the datamodule's ids are the model's own."""
    ngram = getattr(getattr(model.base_model, "embeddings", None), "ngram", None)
    if not isinstance(ngram, HashedNgramEmbedding) or not ngram.needs_vocabulary:
        return
    datasets = getattr(datamodule, "datasets", None) or {}
    tokens = getattr(datasets.get("train"), "tokens", None)
    if tokens is None:
        raise PocketbertError("architecture.ngram_vocabulary counts the training texts' bigrams when training starts; "
                              "train with a NewsDataModule or PretrainingDataModule (or set ngram_vocabulary: 0)")
    counts = ngram.fill_bigram_vocabulary(tokens.ids, tokens.offsets)
    rank_zero_info(f"bigram vocabulary: the {counts['kept']:,} most frequent of {counts['distinct_bigrams']:,} "
                   f"distinct bigrams in the training texts get a row each ({counts['coverage']:.0%} of bigram "
                   "occurrences); the others share one")
