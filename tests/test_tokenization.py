"""Chinese text must map to real bert-base-chinese ids (transformers 5 has traps that map everything to one id)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lightning_modules.errors import PocketbertError
from lightning_modules.hub import load_tokenizer, read_vocab_file, resolve_pretrained, vocab_tokens
from lightning_modules.token_cache import tokenize


def test_vocab_file_gives_real_ids(vocab_file: Path) -> None:
    tokenizer = load_tokenizer(vocab_file)
    vocab = read_vocab_file(vocab_file)
    ids = tokenizer("体育新闻：国足晋级")["input_ids"]
    assert ids[0] == vocab["[CLS]"] == 101 and ids[-1] == vocab["[SEP]"] == 102
    body = ids[1:-1]
    assert body == [vocab[ch] for ch in "体育新闻：国足晋级"]  # one id per character, looked up in vocab.txt
    assert vocab["[UNK]"] not in body
    assert len(set(body)) == len(set("体育新闻：国足晋级"))  # distinct characters -> distinct ids


def test_vocab_dir_and_vocab_tokens_round_trip(vocab_file: Path, tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text(vocab_file.read_text("utf-8"), encoding="utf-8")
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer("足球")["input_ids"] == load_tokenizer(vocab_file)("足球")["input_ids"]
    assert vocab_tokens(tokenizer) == vocab_file.read_text("utf-8").rstrip("\n").split("\n")


def test_hub_name_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PocketbertError, match=r"news16_cpu\.yaml"):
        load_tokenizer("bert-base-chinese-not-cached")
    with pytest.raises(PocketbertError, match="offline recipe"):
        resolve_pretrained("bert-base-chinese-not-cached")
    assert time.perf_counter() - start < 5


def test_token_cache_second_call_skips_tokenizer(vocab_file: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(vocab_file)
    texts = ["体育新闻", "股票大涨了", "很长" * 100]
    first = tokenize(texts, tokenizer, 16, tmp_path)
    assert not first.from_cache and first.row(2).numel() == 16  # truncated to max_length
    key = "fixed-key"
    tokenize(texts, tokenizer, 16, tmp_path, tokenizer_key=key)
    second = tokenize(texts, _Exploding(), 16, tmp_path, tokenizer_key=key)  # type: ignore[arg-type]
    assert second.from_cache and second.ids.equal(first.ids) and second.offsets.equal(first.offsets)
    assert not tokenize(texts, tokenizer, 32, tmp_path).from_cache  # max length is part of the key
    assert not tokenize([*texts, "新"], tokenizer, 16, tmp_path).from_cache  # so are the texts


class _Exploding:
    def __call__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("tokenizer called although the cache should have answered")


def test_packaged_vocab_is_the_default_and_needs_no_data_dir_copy(vocab_file: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_modules.datamodule import NewsDataModule
    from lightning_modules.hub import PACKAGED_VOCAB
    from lightning_modules.token_cache import tokenizer_fingerprint

    assert PACKAGED_VOCAB.read_bytes() == vocab_file.read_bytes()  # the shared data's copy, shipped as an asset
    dm = NewsDataModule(train_file="corpus.tsv", format="tsv", data_dir=tmp_path)  # a data dir with no vocab/
    assert dm.tokenizer_path == str(PACKAGED_VOCAB)
    tokenizer = load_tokenizer(dm.tokenizer_path)
    vocab = read_vocab_file(vocab_file)
    ids = tokenizer("体育新闻：国足晋级")["input_ids"][1:-1]
    assert ids == [vocab[ch] for ch in "体育新闻：国足晋级"] and len(set(ids)) == len(ids) and 100 not in ids
    # recipes naming the shared data's relative path still work where the data dir lacks it: same content, so token
    # caches and teacher-logit caches (keyed by the tokenizer fingerprint) stay valid
    old = NewsDataModule(train_file="corpus.tsv", format="tsv", data_dir=tmp_path,
                         tokenizer="vocab/bert-base-chinese-vocab.txt")
    assert old.tokenizer_path == str(PACKAGED_VOCAB)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(load_tokenizer(vocab_file))
    monkeypatch.chdir(tmp_path)  # a model built by hand with the old default relative name
    assert load_tokenizer("vocab/bert-base-chinese-vocab.txt")("足球")["input_ids"] == [101, vocab["足"],
                                                                                        vocab["球"], 102]
