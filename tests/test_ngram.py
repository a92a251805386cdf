"""Hashed n-gram embeddings (export/ngram_bert.py): the hashing itself, padding and pruning invariance, save/load,
and exports (ONNX fp32/INT8, Core ML graph) on real headlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import AutoModelForSequenceClassification

from export import EvalSet, ShippedModel, coreml
from export.evaluation import hf_predictor, onnx_predictor, parity, predict_all
from export.ngram_bert import MAX_ORDER, HashedNgramEmbedding, NgramBertConfig, hash_multipliers
from export.onnx_export import export_onnx, onnx_session, quantize_onnx_int8
from lightning_modules.corpus import normalize_text, read_raw
from lightning_modules.encoders import EncoderSpec, build_from_spec
from lightning_modules.errors import PocketbertError
from lightning_modules.hub import load_tokenizer
from lightning_modules.vocab_pruning import PrunedVocab
from tests.helpers import tiny_spec

SPEC = tiny_spec("ngram32_bigram_trigram")
LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def headlines(data_dir: Path) -> list[str]:
    rows = read_raw(data_dir / "nlpcc2017" / "headlines.char.tsv", "nlpcc_char")[:300]
    return [normalize_text(row.text, char_separated=True) for row in rows]


@pytest.fixture(scope="module")
def tokenizer(vocab_file: Path) -> object:
    return load_tokenizer(vocab_file)


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_from_spec(SPEC, vocab_size=21128, pad_token_id=0, label_names=LABELS, dropout=0.1).eval()


def test_ngram_ids_are_the_hash_of_the_tokens_to_the_left() -> None:
    config = NgramBertConfig(vocab_size=50, hidden_size=8, num_attention_heads=2, ngram_orders=[2, 3],
                             ngram_buckets=97, hash_vocab_size=50)
    ngram = HashedNgramEmbedding(config)
    ids = torch.tensor([[3, 7, 11, 0]])
    got = ngram.bucket_ids(ids)[0]  # (seq, orders)
    m, fill = config.ngram_multipliers, 50
    for i in range(4):
        left = [ids[0, i - k].item() if i - k >= 0 else fill for k in range(MAX_ORDER)]
        bigram = (left[0] * m[0] % 97 + left[1] * m[1] % 97) % 97
        trigram = (left[0] * m[0] % 97 + left[1] * m[1] % 97 + left[2] * m[2] % 97) % 97 + 97
        assert got[i].tolist() == [bigram, trigram]


def test_hashing_stays_in_int32_and_spreads_real_bigrams(headlines: list[str], tokenizer: object) -> None:
    multipliers = hash_multipliers(21128, [2, 3])
    assert all(21128 * m < 2**31 for m in multipliers)  # Core ML computes the hash in int32
    assert hash_multipliers(250_000, [2])[1] * 250_001 < 2**31  # large vocabularies get smaller multipliers
    config = NgramBertConfig(vocab_size=21128, hidden_size=8, num_attention_heads=2, ngram_orders=[2],
                             ngram_buckets=20011)
    ngram = HashedNgramEmbedding(config)
    bigrams: dict[tuple[int, int], int] = {}
    for ids in tokenizer(headlines)["input_ids"]:  # type: ignore[operator]
        buckets = ngram.bucket_ids(torch.tensor([ids]))[0, :, 0].tolist()
        for i in range(1, len(ids)):
            bigrams[(ids[i - 1], ids[i])] = buckets[i]
    distinct_buckets = len(set(bigrams.values()))
    # as many distinct buckets as a uniformly random hash would fill: B * (1 - exp(-n / B))
    expected = 20011 * (1 - np.exp(-len(bigrams) / 20011))
    assert len(bigrams) > 3000 and distinct_buckets > 0.98 * expected


def test_right_padding_does_not_change_logits(tokenizer: object) -> None:
    classifier = model()
    ids = torch.tensor([tokenizer("北京时间昨晚NBA总决赛勇士夺冠")["input_ids"]])  # type: ignore[operator]
    padded = torch.cat([ids, torch.zeros((1, 9), dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros((1, 9), dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = classifier(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        with_padding = classifier(input_ids=padded, attention_mask=mask).logits
    assert torch.equal(plain, with_padding)


def test_pruning_keeps_every_ngram_row_and_the_logits(headlines: list[str], tokenizer: object, tmp_path: Path) -> None:
    classifier = model()
    full_ids = tokenizer(headlines[:50])["input_ids"]  # type: ignore[operator]
    pruned = PrunedVocab.from_training_ids(tokenizer, torch.tensor([i for row in full_ids for i in row]))  # type: ignore[arg-type]
    with torch.no_grad():
        before = [classifier(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long))
                  .logits for row in full_ids[:10]]
        pruned.prune_embeddings(classifier, report=False)
        pruned_ids = pruned.tokenizer(headlines[:10])["input_ids"]
        after = [classifier(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long))
                 .logits for row in pruned_ids]
    assert classifier.config.vocab_size == len(pruned.tokens) < 2000
    assert classifier.base_model.embeddings.ngram.hash_ids.tolist() == pruned.kept_ids.tolist()
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    classifier.save_pretrained(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "saved")).eval()
    assert type(reloaded).__name__ == "NgramBertForSequenceClassification"
    with torch.no_grad():
        again = reloaded(input_ids=torch.tensor([pruned_ids[0]]), attention_mask=torch.ones(1, len(pruned_ids[0]),
                                                                                              dtype=torch.long)).logits
    assert torch.allclose(again, after[0], atol=1e-6)  # the reloaded model may pick another attention kernel


def test_exports_match_pytorch_on_real_headlines(headlines: list[str], tokenizer: object, tmp_path: Path) -> None:
    rows = tokenizer(headlines[:64], truncation=True, max_length=64)["input_ids"]  # type: ignore[operator]
    assert_exports_match(model(), rows, tmp_path, int8=True)


def assert_exports_match(classifier: torch.nn.Module, rows: list[list[int]], tmp_path: Path, int8: bool) -> None:
    """ONNX fp32 (and INT8) files and the Core ML graph give the PyTorch model's logits on ``rows``."""
    shipped = ShippedModel(classifier, LABELS, [], 64)
    examples = EvalSet(rows, [0] * len(rows))
    reference = predict_all(hf_predictor(classifier), examples)
    export_onnx(shipped, tmp_path / "model.onnx")
    fp32 = parity(reference, predict_all(onnx_predictor(onnx_session(tmp_path / "model.onnx")), examples))
    assert fp32["max_abs_logit_diff"] < 1e-4 and fp32["agreement"] == 1.0
    if int8:
        quantize_onnx_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
        quantized = parity(reference, predict_all(onnx_predictor(onnx_session(tmp_path / "model.int8.onnx")), examples))
        assert quantized["max_abs_logit_diff"] < 0.05
    with coreml.scratch_space():
        settings = coreml.CoreMLSettings(sequence_length=64, target="iOS17", compute_units="ALL", precision="float32")
        _, program = coreml.convert(shipped, settings, metadata={})
    assert coreml.graph_parity(program, shipped, examples, 64, 8)["max_abs_logit_diff"] < 1e-4


def test_int8_quantizes_the_op_types_asked_for(tmp_path: Path) -> None:
    """benchmarks/int8_breakdown.py quantizes the MatMuls or the tables alone; the default quantizes both."""
    export_onnx(ShippedModel(model(), LABELS, [], 64), tmp_path / "model.onnx")
    word_table = (21128, SPEC.hidden_size)
    for op_types, integer_matmuls, int8_tables in ((None, True, True), (["MatMul"], True, False),
                                                   (["Gather"], False, True)):
        quantize_onnx_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", op_types)
        graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
        assert ("MatMulInteger" in {node.op_type for node in graph.node}) == integer_matmuls, op_types
        tables = [t for t in graph.initializer if tuple(t.dims) == word_table]
        assert len(tables) == 1 and (tables[0].data_type != onnx.TensorProto.FLOAT) == int8_tables, op_types


def test_bad_ngram_settings_are_one_line_errors() -> None:
    for bad, needle in ((EncoderSpec(ngram_orders=[1]), "ngram_orders must be between 2 and 4"),
                        (EncoderSpec(ngram_orders=[2], ngram_buckets=0), "ngram_buckets must be positive"),
                        (EncoderSpec(ngram_orders=[2], kind="mobilebert"), "ngram_orders needs kind: bert")):
        with pytest.raises(PocketbertError, match=needle):
            build_from_spec(bad, vocab_size=100, pad_token_id=0, label_names=LABELS, dropout=0.1)


def test_onnx_files_store_each_constant_once(headlines: list[str], tokenizer: object, tmp_path: Path) -> None:
    """The bag of n-grams hashes the ids a second time; the exporter folded the pruned id map into two constants
    (2 x 46 KB of the shipped 4 MB INT8 file) once the vocabulary has more than about a thousand tokens."""
    torch.manual_seed(0)
    spec = tiny_spec("ngram32")
    spec.pooling, spec.ngram_bag = "mean", True
    classifier = build_from_spec(spec, vocab_size=21128, pad_token_id=0, label_names=LABELS, dropout=0.1).eval()
    full_ids = tokenizer(headlines)["input_ids"]  # type: ignore[operator]
    pruned = PrunedVocab.from_training_ids(tokenizer, torch.tensor([i for row in full_ids for i in row]))  # type: ignore[arg-type]
    pruned.prune_embeddings(classifier, report=False)
    export_onnx(ShippedModel(classifier, LABELS, [], 64), tmp_path / "model.onnx")
    quantize_onnx_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    vocab_size = len(pruned.tokens)
    for name in ["model.onnx", "model.int8.onnx"]:
        graph = onnx.load(str(tmp_path / name)).graph
        id_maps = [t for t in graph.initializer if tuple(t.dims) == (vocab_size,)]
        assert len(id_maps) == 1, f"{name} stores the id map {len(id_maps)} times"
        assert numpy_helper.to_array(id_maps[0]).tolist() == pruned.kept_ids.tolist()
    ids = pruned.tokenizer(headlines[:20], truncation=True, max_length=64)["input_ids"]
    examples = EvalSet(ids, [0] * len(ids))
    reference = predict_all(hf_predictor(classifier), examples)
    fp32 = parity(reference, predict_all(onnx_predictor(onnx_session(tmp_path / "model.onnx")), examples))
    assert fp32["max_abs_logit_diff"] < 1e-4 and fp32["agreement"] == 1.0


def vocabulary_model(tokenizer: object, headlines: list[str],
                     kept: int = 400) -> tuple[torch.nn.Module, list[list[int]]]:
    torch.manual_seed(0)
    spec = tiny_spec("ngram32")
    spec.ngram_vocabulary, spec.ngram_size, spec.pooling, spec.ngram_bag = kept, 16, "mean", True
    classifier = build_from_spec(spec, vocab_size=21128, pad_token_id=0, label_names=LABELS, dropout=0.1).eval()
    rows = tokenizer(headlines, truncation=True, max_length=64)["input_ids"]  # type: ignore[operator]
    offsets = torch.tensor([0] + [len(row) for row in rows]).cumsum(0)
    classifier.base_model.embeddings.ngram.fill_bigram_vocabulary(torch.tensor([i for row in rows for i in row]),
                                                                  offsets)
    return classifier, rows


def test_bigram_vocabulary_gives_each_frequent_bigram_its_own_row(headlines: list[str], tokenizer: object,
                                                                   tmp_path: Path) -> None:
    classifier, rows = vocabulary_model(tokenizer, headlines)
    ngram = classifier.base_model.embeddings.ngram
    counts: dict[tuple[int, int], int] = {}
    for row in rows:
        for left, right in zip([ngram.fill_id, *row[:-1]], row, strict=True):
            counts[(left, right)] = counts.get((left, right), 0) + 1
    ranked = sorted(counts, key=lambda pair: (-counts[pair], pair[0] * ngram.key_base + pair[1]))
    slots = ngram.vocabulary_keys.shape[0]
    frequent = torch.tensor(ranked[:400])
    found = ngram.vocabulary_rows(frequent[:, 0], frequent[:, 1])
    # a tiny table fills its last slots poorly: up to 1% may be dropped (THUCNews-10, 20,000 and 40,000: none)
    assert int((found < slots).sum()) >= 396
    assert len(set(found[found < slots].tolist())) == int((found < slots).sum())  # a row each
    rare = torch.tensor(ranked[400:] + [pair for pair, row in zip(ranked[:400], found.tolist(), strict=True)
                                         if row == slots])
    assert bool((ngram.vocabulary_rows(rare[:, 0], rare[:, 1]) == slots).all())  # the rest share the last row
    ids = torch.tensor([rows[0]])
    first_row = ngram.bucket_ids(ids)[0, :, 0]
    expected = ngram.vocabulary_rows(torch.tensor([ngram.fill_id, *rows[0][:-1]]), ids[0])
    assert torch.equal(first_row, expected)
    classifier.save_pretrained(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "saved")).eval()
    assert torch.equal(reloaded.base_model.embeddings.ngram.vocabulary_keys, ngram.vocabulary_keys)
    with torch.no_grad():
        mask = torch.ones_like(ids)
        assert torch.allclose(reloaded(input_ids=ids, attention_mask=mask).logits,
                              classifier(input_ids=ids, attention_mask=mask).logits, atol=1e-6)


def test_bigram_vocabulary_model_exports_with_parity(headlines: list[str], tokenizer: object, tmp_path: Path) -> None:
    classifier, rows = vocabulary_model(tokenizer, headlines)
    pruned = PrunedVocab.from_training_ids(tokenizer, torch.tensor([i for row in rows for i in row]))  # type: ignore[arg-type]
    before = classifier(input_ids=torch.tensor([rows[3]]), attention_mask=torch.ones(1, len(rows[3]), dtype=torch.long))
    pruned.prune_embeddings(classifier, report=False)
    pruned_rows = pruned.tokenizer(headlines[:64], truncation=True, max_length=64)["input_ids"]
    after = classifier(input_ids=torch.tensor([pruned_rows[3]]),
                       attention_mask=torch.ones(1, len(pruned_rows[3]), dtype=torch.long))
    assert torch.equal(before.logits, after.logits)  # pruning the tokens keeps every bigram's row
    assert_exports_match(classifier, pruned_rows, tmp_path, int8=False)
