"""BERT whose token embeddings also see hashed character n-grams, computed inside the model from the input ids.

Short headlines are classified well by character n-grams (a TF-IDF bigram linear model is a strong baseline), and a
small transformer trained from scratch struggles to learn them from single characters. Here every position ``i``
adds the embeddings of the n-grams that *end* at ``i`` (tokens ``i-n+1 .. i``), looked up by a hash of their ids:

    hash_n(i) = (sum_k (stable_id[x[i-k]] * multiplier_k) mod buckets) mod buckets + n's table offset

Why this shape:
- apps keep the same WordPiece ids and ``vocab.txt``: the hashing is part of the graph (ONNX, Core ML, TorchScript);
- n-grams look only left, so right padding never changes a real position's n-grams (padded and unpadded rows give
  identical logits), and positions before the text use a fill id no token has;
- ``stable_id`` (the buffer ``hash_ids``) maps the model's token ids to the ids of the vocabulary the n-gram table
  was trained with, so pruning the vocabulary (or pretraining on the full one) keeps every n-gram's row;
- integer maths stays below 2**31 (Core ML runs int32): ``stable_id < hash_vocab_size`` and
  ``multiplier_k < 2**31 / (hash_vocab_size + 1)``.

With ``ngram_vocabulary: K`` the table has one row per bigram of the K most frequent in the training texts (plus one
row shared by every other bigram) instead of hash buckets: a static perfect hash (hash and displace) inside the
graph finds a bigram's row, and a stored key per row tells a known bigram from any other. Random buckets merge a
rare, telling bigram with frequent ones; on THUCNews-10 a linear SVM over unigrams and the 20,000 most frequent
bigrams scores 0.907, over 20,000 hashed buckets 0.898.

This module imports only torch and transformers (no project code), so every loader of a shipped model (export,
benchmark, ``classify``) can rebuild it. Importing it registers the ``ngram_bert`` model type with the ``Auto*``
classes, so ``AutoModelForSequenceClassification.from_pretrained(dir)`` loads a saved model.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)
from transformers.models.bert.modeling_bert import BertEmbeddings
from transformers.pytorch_utils import prune_linear_layer

MODEL_TYPE = "ngram_bert"
MAX_ORDER = 4
# Odd constants (fixed, so a config written today hashes the same tomorrow); scaled down to fit int32 when needed.
_MULTIPLIERS = (1, 92821, 68917, 40063)


# The bigram vocabulary's three hashes (home slot, group, stride), two multipliers each.
_VOCABULARY_MULTIPLIERS = (92821, 68917, 40063, 15809, 77003, 27449)
VOCABULARY_LOAD = 0.99  # known bigrams per slot of the perfect hash: 1% of the rows stay empty
VOCABULARY_GROUP_SIZE = 4  # bigrams per displacement group, on average


def next_prime(n: int) -> int:
    """The smallest prime >= n."""
    candidate = max(2, n)
    while any(candidate % d == 0 for d in range(2, int(candidate**0.5) + 1)):
        candidate += 1
    return candidate


def hash_multipliers(hash_vocab_size: int, orders: list[int], constants: tuple[int, ...] = _MULTIPLIERS) -> list[int]:
    """One multiplier per n-gram position, each small enough that ``id * multiplier`` fits in int32."""
    limit = (2**31 - 1) // (hash_vocab_size + 1)
    if limit < 2:
        raise ValueError(f"a vocabulary of {hash_vocab_size} tokens is too large for int32 n-gram hashing")
    return [1 + (m % (limit - 1)) if m >= limit else m for m in constants[: max(orders)]]


class NgramBertConfig(BertConfig):
    """``BertConfig`` plus the hashed n-gram embedding.

    Args:
        ngram_orders: N-gram lengths whose embeddings are added, e.g. ``[2]`` (bigrams) or ``[2, 3]``.
        ngram_buckets: Hash buckets per order (rows of the n-gram table per order).
        ngram_size: Width of the n-gram table; projected to ``hidden_size`` when different (a smaller table).
        ngram_vocabulary: When positive, the table holds the ``ngram_vocabulary`` most frequent bigrams of the
            training texts, a row each, and one row for all others (``ngram_orders`` must be ``[2]``); the bigrams are
            counted when training starts (``fill_bigram_vocabulary``). 0: hash every n-gram into ``ngram_buckets``.
        ngram_dropout: Training-time probability of dropping a position's n-gram vector (the table is large and
            memorizes rare n-grams otherwise).
        hash_vocab_size: Size of the vocabulary the stable ids come from (the original, unpruned one).
        ngram_multipliers: Hash multipliers (derived from ``hash_vocab_size`` when not given).
        pooling: What the pooler summarizes: the ``cls`` token (BERT's) or the ``mean`` of the real tokens' last
            hidden states (better for small models trained on little data).
        ngram_bag: Append the mean of the text's n-gram vectors (``ngram_size`` values, a fastText-like bag of
            n-grams) to the pooled features the classifier reads.
        layer_heads: Attention heads kept per layer after structured pruning (each of ``hidden_size /
            num_attention_heads`` values); all heads when None.
        layer_intermediate_sizes: FFN neurons kept per layer after structured pruning; ``intermediate_size`` when
            None.
        linear_companion: Append a linear model's class scores (:class:`LinearCompanion`: TF-IDF over the text's
            tokens and n-gram rows) to the pooled features; the classifier weighs them with its last ``num_labels``
            columns. Its tables are zeros until fitted after training.
    """

    model_type = MODEL_TYPE

    def __init__(self, ngram_orders: list[int] | None = None, ngram_buckets: int = 20000,
                 ngram_size: int | None = None, ngram_dropout: float = 0.0, ngram_vocabulary: int = 0,
                 hash_vocab_size: int | None = None,
                 ngram_multipliers: list[int] | None = None, pooling: str = "cls", ngram_bag: bool = False,
                 layer_heads: list[int] | None = None, layer_intermediate_sizes: list[int] | None = None,
                 linear_companion: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.linear_companion = bool(linear_companion)
        self.layer_heads = [int(n) for n in layer_heads] if layer_heads is not None else None
        self.layer_intermediate_sizes = ([int(n) for n in layer_intermediate_sizes]
                                         if layer_intermediate_sizes is not None else None)
        for name, sizes in (("layer_heads", self.layer_heads), ("layer_intermediate_sizes",
                                                                 self.layer_intermediate_sizes)):
            if sizes is not None and (len(sizes) != self.num_hidden_layers or min(sizes) < 1):
                raise ValueError(f"{name} needs one positive size per layer ({self.num_hidden_layers}), got {sizes}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be cls or mean, got {pooling!r}")
        self.pooling = pooling
        self.ngram_bag = bool(ngram_bag)
        self.ngram_orders = sorted({int(n) for n in (ngram_orders or [2])})
        if not all(2 <= n <= MAX_ORDER for n in self.ngram_orders):
            raise ValueError(f"ngram_orders must be between 2 and {MAX_ORDER}, got {self.ngram_orders}")
        if ngram_buckets < 1:
            raise ValueError(f"ngram_buckets must be positive, got {ngram_buckets}")
        self.ngram_buckets = int(ngram_buckets)
        if ngram_vocabulary < 0 or (ngram_vocabulary and self.ngram_orders != [2]):
            raise ValueError(f"ngram_vocabulary needs ngram_orders [2] and a size >= 0, got {ngram_vocabulary} "
                             f"with orders {self.ngram_orders}")
        self.ngram_vocabulary = int(ngram_vocabulary)
        self.ngram_size = int(ngram_size or self.hidden_size)
        self.ngram_dropout = float(ngram_dropout)
        self.hash_vocab_size = int(hash_vocab_size or self.vocab_size)
        self.ngram_multipliers = list(ngram_multipliers or hash_multipliers(self.hash_vocab_size, self.ngram_orders))

    @property
    def vocabulary_slots(self) -> int:
        """Rows of the perfect hash (the table has one more: the row of every other bigram); a prime, so that every
        stride reaches every slot."""
        return next_prime(int(self.ngram_vocabulary / VOCABULARY_LOAD) + 2)

    @property
    def vocabulary_groups(self) -> int:
        return max(1, self.ngram_vocabulary // VOCABULARY_GROUP_SIZE)

    @property
    def feature_size(self) -> int:
        """Width of the pooled features the classifier reads."""
        return (self.hidden_size + (self.ngram_size if self.ngram_bag else 0)
                + (int(self.num_labels or 2) if self.linear_companion else 0))


class HashedNgramEmbedding(nn.Module):
    """``input_ids`` (batch, seq) -> summed embeddings of the n-grams ending at each position (batch, seq, hidden)."""

    def __init__(self, config: NgramBertConfig) -> None:
        super().__init__()
        self.orders = list(config.ngram_orders)
        self.buckets = int(config.ngram_buckets)
        self.multipliers = list(config.ngram_multipliers)
        self.fill_id = int(config.hash_vocab_size)  # the id "before the text": no token has it
        self.vocabulary = int(config.ngram_vocabulary)
        rows = config.vocabulary_slots + 1 if self.vocabulary else self.buckets * len(self.orders)
        self.table = nn.Embedding(rows, config.ngram_size)
        self.projection = (nn.Linear(config.ngram_size, config.hidden_size, bias=False)
                           if config.ngram_size != config.hidden_size else None)
        self.dropout = float(config.ngram_dropout)
        # model token id -> stable id (the original vocabulary's id); persistent: it changes when pruning
        self.hash_ids = nn.Buffer(torch.arange(config.vocab_size, dtype=torch.long))
        if self.vocabulary:
            self.key_base = int(config.hash_vocab_size) + 1  # key of bigram (a, b): a * key_base + b, < 2**31
            self.slot_multipliers = hash_multipliers(config.hash_vocab_size, [6], _VOCABULARY_MULTIPLIERS)
            # slot -> key of its bigram (-1: empty); group -> displacement. Filled by fill_bigram_vocabulary.
            self.vocabulary_keys = nn.Buffer(torch.full((config.vocabulary_slots,), -1, dtype=torch.int32))
            self.vocabulary_shifts = nn.Buffer(torch.zeros(config.vocabulary_groups, dtype=torch.int32))

    def bucket_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Row of the table for every (order, position): (batch, seq, len(orders))."""
        stable = self.hash_ids[input_ids.long()]  # (batch, seq)
        seq = stable.shape[1]
        padded = nn.functional.pad(stable, (MAX_ORDER - 1, 0), value=self.fill_id)  # (batch, seq + MAX_ORDER - 1)
        if self.vocabulary:
            return self.vocabulary_rows(padded[:, MAX_ORDER - 2 : MAX_ORDER - 2 + seq], stable).unsqueeze(-1)
        # term k: the token k places to the left, times its multiplier, reduced mod buckets (stays in int32)
        terms = [(padded[:, MAX_ORDER - 1 - k : MAX_ORDER - 1 - k + seq] * self.multipliers[k]) % self.buckets
                 for k in range(max(self.orders))]
        rows = []
        for slot, order in enumerate(self.orders):
            total = terms[0]
            for k in range(1, order):
                total = total + terms[k]
            rows.append(total % self.buckets + slot * self.buckets)
        return torch.stack(rows, dim=-1)

    def vocabulary_rows(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Table row of the bigrams (left, right) of stable ids, same shapes: its own row when known, else the last."""
        slots, groups = self.vocabulary_keys.shape[0], self.vocabulary_shifts.shape[0]
        home, group, stride = vocabulary_hashes(left, right, self.slot_multipliers, slots, groups)
        shift = self.vocabulary_shifts[group].to(home.dtype)
        slot = (home + shift * stride) % slots  # shift < 2**31 / slots: the product stays in int32
        known = self.vocabulary_keys[slot].to(left.dtype) == left * self.key_base + right
        return torch.where(known, slot, torch.full_like(slot, slots))

    def table_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The summed table rows of each position's n-grams (batch, seq, ngram_size), dropped out in training."""
        vectors = self.table(self.bucket_ids(input_ids)).sum(dim=2)
        if self.training and self.dropout > 0:
            keep = torch.rand(vectors.shape[:2], device=vectors.device) >= self.dropout
            vectors = vectors * keep.unsqueeze(-1).to(vectors.dtype)
        return vectors

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        vectors = self.table_vectors(input_ids)
        return self.projection(vectors) if self.projection is not None else vectors  # (batch, seq, hidden)

    def keep_tokens(self, kept_ids: torch.Tensor) -> None:
        """Follow a vocabulary pruning: new token ``j`` is old token ``kept_ids[j]``."""
        self.hash_ids = nn.Buffer(self.hash_ids[kept_ids.to(self.hash_ids.device)].clone())

    @property
    def needs_vocabulary(self) -> bool:
        """True for a bigram-vocabulary model whose bigrams were not counted yet (every row would be "other")."""
        return bool(self.vocabulary) and bool((self.vocabulary_keys < 0).all())

    def fill_bigram_vocabulary(self, ids: torch.Tensor, offsets: torch.Tensor) -> dict[str, float]:
        """Give the most frequent bigrams of the texts (model token ids, flat (n,); row starts (rows + 1,)) a row
        each, by a hash-and-displace perfect hash; returns counts for the log."""
        stable = self.hash_ids[ids.long().to(self.hash_ids.device)].long().cpu()
        if len(stable) == 0:
            raise ValueError("no training tokens to count bigrams in")
        starts = torch.zeros(len(stable), dtype=torch.bool)
        starts[offsets[:-1][offsets[:-1] < len(stable)].long()] = True
        left = torch.cat([torch.tensor([self.fill_id]), stable[:-1]]).masked_fill(starts, self.fill_id)
        keys, counts = torch.unique(left * self.key_base + stable, return_counts=True)
        # most frequent first; ties by key (unique sorts the keys; the sort is stable): same texts, same vocabulary
        order = torch.argsort(counts, descending=True, stable=True)[: self.vocabulary]
        chosen = keys[order]
        placed, slots, shifts = perfect_hash(chosen // self.key_base, chosen % self.key_base, self.slot_multipliers,
                                             self.vocabulary_keys.shape[0], self.vocabulary_shifts.shape[0])
        with torch.no_grad():
            device = self.vocabulary_keys.device
            self.vocabulary_keys.fill_(-1)
            self.vocabulary_keys[slots.to(device)] = chosen[placed].to(device=device, dtype=torch.int32)
            self.vocabulary_shifts.copy_(shifts)
        kept_counts = counts[order][placed]
        return {"distinct_bigrams": len(keys), "kept": len(placed),
                "coverage": float(kept_counts.sum() / counts.sum()) if len(keys) else 0.0}


class LinearCompanion(nn.Module):
    """A linear model over the text's tokens and n-gram rows, run beside the transformer: (batch, num_labels) scores.

    Features are TF-IDF: each token id and each n-gram row (the rows :class:`HashedNgramEmbedding` looks up, so the
    companion sees exactly the student's features) counts once per position, times its idf, and the text's vector is
    divided by ``sqrt(sum over positions of idf^2)``. Column ``c < num_labels`` of the tables holds a class's fitted
    weight times the idf (the division is linear, so it sums per position); the last column holds ``idf^2 /
    idf_scale``, brought to the weights' range so that one int8 scale per table serves both; ``intercept`` is the linear
    model's (the scores are its decision function). The tables are zeros
    until ``lightning_modules.companion`` fits them (an NB-SVM on the training split) after the
    transformer is trained, so a student trains without the companion and the classifier's columns for it stay zero.
    """

    def __init__(self, config: NgramBertConfig, ngram_rows: int) -> None:
        super().__init__()
        width = int(config.num_labels or 2) + 1
        self.token_table = nn.Buffer(torch.zeros(config.vocab_size, width))
        self.ngram_table = nn.Buffer(torch.zeros(ngram_rows, width))
        self.idf_scale = nn.Buffer(torch.ones(1))
        self.intercept = nn.Buffer(torch.zeros(width - 1))

    def forward(self, input_ids: torch.Tensor, ngram_rows: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (batch, seq); ngram_rows (batch, seq, orders) -> scores (batch, num_labels)."""
        per_position = (nn.functional.embedding(input_ids.long(), self.token_table)
                        + nn.functional.embedding(ngram_rows.long(), self.ngram_table).sum(dim=2))  # (b, s, L + 1)
        totals = (per_position * attention_mask.unsqueeze(-1).to(per_position.dtype)).sum(dim=1)  # (b, L + 1)
        norm = torch.sqrt((totals[:, -1:] * self.idf_scale).clamp(min=1e-6))  # (b, 1)
        return totals[:, :-1] / norm + self.intercept

    def keep_tokens(self, kept_ids: torch.Tensor) -> None:
        """Follow a vocabulary pruning: new token ``j`` is old token ``kept_ids[j]``."""
        self.token_table = nn.Buffer(self.token_table[kept_ids.to(self.token_table.device)].clone())


def vocabulary_hashes(left: torch.Tensor, right: torch.Tensor, m: list[int], slots: int,
                      groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(home slot, group, stride in 1..slots-1) of bigrams of stable ids; every product stays in int32."""
    home = ((left * m[0]) % slots + (right * m[1]) % slots) % slots
    group = ((left * m[2]) % groups + (right * m[3]) % groups) % groups
    stride = ((left * m[4]) % (slots - 1) + (right * m[5]) % (slots - 1)) % (slots - 1) + 1
    return home, group, stride


def perfect_hash(left: torch.Tensor, right: torch.Tensor, multipliers: list[int], slots: int,
                 groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hash and displace over bigrams given most frequent first: (the indices placed, their slots, the shift of every
    group), distinct slots ``(home + shift[group] * stride) % slots``. The largest groups go first, while slots are
    free. ``slots`` is a prime, so every stride reaches every slot; a group that still finds no shift (members alike in
    all three hashes, or too few free slots left) drops its rarest member."""
    home, group, stride = vocabulary_hashes(left, right, multipliers, slots, groups)
    max_shift = min(slots, (2**31 - 1) // slots)
    taken = torch.zeros(slots, dtype=torch.bool)
    shifts = torch.zeros(groups, dtype=torch.int32)
    placed: list[torch.Tensor] = []
    where: list[torch.Tensor] = []
    by_group: dict[int, list[int]] = {}
    for index, g in enumerate(group.tolist()):
        by_group.setdefault(g, []).append(index)
    for g, members in sorted(by_group.items(), key=lambda item: (-len(item[1]), item[0])):
        while members:
            found = _first_free_shift(home[members], stride[members], taken, max_shift)
            if found is not None:
                shift, places = found
                taken[places] = True
                shifts[g] = shift
                placed.append(torch.tensor(members))
                where.append(places)
                break
            members = members[:-1]
    if not placed:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), shifts
    return torch.cat(placed), torch.cat(where), shifts


def _first_free_shift(home: torch.Tensor, stride: torch.Tensor, taken: torch.Tensor,
                      max_shift: int, chunk: int = 64) -> tuple[int, torch.Tensor] | None:
    """The smallest shift putting every member on a free slot of its own, with those slots; None when none does."""
    slots = taken.shape[0]
    for start in range(0, max_shift, chunk):
        shifts = torch.arange(start, min(start + chunk, max_shift)).unsqueeze(1)  # (shifts, 1)
        places = (home.unsqueeze(0) + shifts * stride.unsqueeze(0)) % slots  # (shifts, members)
        ordered = places.sort(dim=1).values
        distinct = (ordered[:, 1:] != ordered[:, :-1]).all(dim=1)
        free = ~taken[places].any(dim=1) & distinct
        found = torch.nonzero(free)
        if len(found):
            row = int(found[0])
            return start + row, places[row]
    return None


class NgramBertEmbeddings(BertEmbeddings):
    """BERT embeddings (word + position + type, LayerNorm, dropout) with the n-gram vectors added to the words."""

    def __init__(self, config: NgramBertConfig) -> None:
        super().__init__(config)
        self.ngram = HashedNgramEmbedding(config)

    # **kwargs: the cache-length argument is named differently across transformers versions
    def forward(self, input_ids: torch.LongTensor | None = None,  # type: ignore[override]
                token_type_ids: torch.LongTensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        if input_ids is None:
            raise ValueError("ngram_bert needs input_ids (its n-grams are hashed from them), not inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        inputs_embeds = inputs_embeds + self.ngram(input_ids)
        if token_type_ids is None:
            token_type_ids = cast(torch.LongTensor, torch.zeros_like(input_ids))
        return super().forward(input_ids=None, token_type_ids=token_type_ids, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, **kwargs)


def _init_ngram(module: nn.Module, config: BertConfig) -> None:
    """Initialize what ``BertPreTrainedModel._init_weights`` does not know (runs for missing weights too)."""
    if isinstance(module, HashedNgramEmbedding):
        nn.init.normal_(module.table.weight, std=config.initializer_range)
        if module.projection is not None:
            nn.init.normal_(module.projection.weight, std=config.initializer_range)
        with torch.no_grad():
            module.hash_ids.copy_(torch.arange(module.hash_ids.numel(), device=module.hash_ids.device))
            if module.vocabulary:
                module.vocabulary_keys.fill_(-1)
                module.vocabulary_shifts.zero_()
    elif isinstance(module, LinearCompanion):  # unfitted: no scores, so the student trains without it
        with torch.no_grad():
            module.token_table.zero_()
            module.ngram_table.zero_()
            module.idf_scale.fill_(1.0)
            module.intercept.zero_()


def masked_mean(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, width), (batch, seq) -> (batch, width): the mean over real (unmasked) positions."""
    mask = attention_mask.unsqueeze(-1).to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def keep_heads(attention: nn.Module, heads: list[int], head_size: int) -> None:
    """Keep only ``heads`` (indices) of a ``BertAttention``: Q/K/V output rows and the output projection's input
    columns shrink; the forward pass reshapes by head size, so it runs unchanged."""
    index = cast(torch.LongTensor, torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in heads]))
    self_attention: Any = attention.self
    for name in ("query", "key", "value"):
        setattr(self_attention, name, prune_linear_layer(getattr(self_attention, name), index, dim=0))
    output: Any = attention.output
    output.dense = prune_linear_layer(output.dense, index, dim=1)
    self_attention.num_attention_heads = len(heads)
    self_attention.all_head_size = len(heads) * head_size


def keep_neurons(layer: nn.Module, kept: torch.Tensor) -> None:
    """Keep only the FFN neurons ``kept`` (indices) of a ``BertLayer``: intermediate rows and output columns."""
    neurons = cast(torch.LongTensor, kept.long())
    intermediate: Any = layer.intermediate
    output: Any = layer.output
    intermediate.dense = prune_linear_layer(intermediate.dense, neurons, dim=0)
    output.dense = prune_linear_layer(output.dense, neurons, dim=1)


def apply_layer_sizes(layers: nn.ModuleList, config: NgramBertConfig) -> None:
    """Shrink freshly built layers to the config's pruned sizes (the weights are loaded afterwards)."""
    head_size = config.hidden_size // config.num_attention_heads
    for index, layer in enumerate(layers):
        attention: Any = layer.attention
        if config.layer_heads is not None and config.layer_heads[index] != attention.self.num_attention_heads:
            keep_heads(attention, list(range(config.layer_heads[index])), head_size)
        intermediate: Any = layer.intermediate
        if (config.layer_intermediate_sizes is not None
                and config.layer_intermediate_sizes[index] != intermediate.dense.out_features):
            keep_neurons(layer, torch.arange(config.layer_intermediate_sizes[index]))


class NgramBertModel(BertModel):
    config_class = NgramBertConfig

    def __init__(self, config: NgramBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.embeddings = NgramBertEmbeddings(config)
        ngram_rows = cast(HashedNgramEmbedding, self.embeddings.ngram).table.num_embeddings
        self.companion = LinearCompanion(config, ngram_rows) if config.linear_companion and add_pooling_layer else None
        apply_layer_sizes(self.encoder.layer, config)
        self.post_init()

    def pooled_features(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
        """What the classifier reads (batch, config.feature_size), from the last hidden states (batch, seq, hidden).

        The export graph calls this too, so every format computes the same features."""
        if self.pooler is None:
            raise ValueError("pooled_features needs the pooling layer")
        if self.config.pooling == "mean":
            pooled = self.pooler.activation(self.pooler.dense(masked_mean(hidden, attention_mask)))
        else:
            pooled = self.pooler(hidden)
        if self.config.ngram_bag:
            ngram = cast(HashedNgramEmbedding, self.embeddings.ngram)
            bag = masked_mean(ngram.table_vectors(input_ids), attention_mask)  # (batch, ngram_size)
            pooled = torch.cat([pooled, bag], dim=-1)
        if self.companion is not None:
            ngram = cast(HashedNgramEmbedding, self.embeddings.ngram)
            scores = self.companion(input_ids, ngram.bucket_ids(input_ids), attention_mask)  # (batch, num_labels)
            pooled = torch.cat([pooled, scores], dim=-1)
        return pooled

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if self.pooler is not None and input_ids is not None and (self.config.pooling != "cls" or self.config.ngram_bag
                                                                   or self.companion is not None):
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            pooled = self.pooled_features(outputs[0], input_ids, mask)
            if isinstance(outputs, tuple):
                return (outputs[0], pooled, *outputs[2:])
            outputs.pooler_output = pooled
        return outputs

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_ngram(module, self.config)


class NgramBertForSequenceClassification(BertForSequenceClassification):
    config_class = NgramBertConfig

    def __init__(self, config: NgramBertConfig) -> None:
        super().__init__(config)
        self.bert = NgramBertModel(config)
        # the pooled features may carry the n-gram bag and the companion's scores
        self.classifier = nn.Linear(config.feature_size, config.num_labels or 2)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_ngram(module, self.config)
        if self.config.linear_companion and module is getattr(self, "classifier", None):
            with torch.no_grad():  # the companion's columns: off until it is fitted (lightning_modules.companion)
                cast(nn.Linear, module).weight[:, -int(self.config.num_labels or 2):].zero_()


class NgramBertForMaskedLM(BertForMaskedLM):
    config_class = NgramBertConfig

    def __init__(self, config: NgramBertConfig) -> None:
        super().__init__(config)
        self.bert = NgramBertModel(config, add_pooling_layer=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_ngram(module, self.config)


AutoConfig.register(MODEL_TYPE, NgramBertConfig, exist_ok=True)
AutoModel.register(NgramBertConfig, NgramBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(NgramBertConfig, NgramBertForSequenceClassification, exist_ok=True)
AutoModelForMaskedLM.register(NgramBertConfig, NgramBertForMaskedLM, exist_ok=True)
