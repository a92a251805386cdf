"""What an app bundles beside the model: ``vocab.txt``, ``labels.json`` and golden token ids for its tokenizer tests.

The golden file lets the app's Swift WordPiece tokenizer be unit-tested against ours: for each sample it holds the
raw text, the text after the normalization training applied (NFKC, whitespace runs collapsed, stripped), the
WordPiece tokens and the ids the model expects ([CLS] ... [SEP], truncated to the model's max length).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any

from transformers import BertTokenizer

from export.errors import ExportError
from export.files import write_json, write_text

# Edge cases a hand-written tokenizer gets wrong: Latin case and accents, digits, full-width forms (NFKC),
# Chinese punctuation, emoji ([UNK]), whitespace runs, and a text longer than any max length (truncation).
EDGE_CASES = [
    "iPhone 15 Pro发布，售价7999元！",
    "ＮＢＡ总决赛：勇士ｖｓ凯尔特人　１２３",
    "“双引号”与《书名号》、顿号；分号",
    "Café Résumé naïve ÜBER",
    "今天天气很好😀 #话题# @用户",
    "  多个   空格\t和制表符  ",
    "中国" * 200,
]
_WHITESPACE = re.compile(r"\s+")
# The name of the text normalization below, recorded in the bundle (golden_tokens.json, manifest.json) so a reader
# of the bundle (an app, `python -m recipes classify`) knows which one to apply before tokenizing.
NORMALIZATION = "nfkc+collapse-whitespace"


def normalize(text: str) -> str:
    """The normalization the DataModule applies before tokenizing (apps must apply it too)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


NORMALIZERS = {NORMALIZATION: normalize}


def build_tokenizer(vocab: list[str], settings: dict[str, Any] | None = None) -> BertTokenizer:
    """A WordPiece tokenizer over exactly ``vocab`` (id = position), with the training tokenizer's ``settings``
    (``lowercase``, ``strip_accents``, ``handle_chinese_chars``; bert-base-chinese's defaults when not recorded).

    ``BertTokenizer(vocab=dict)``: in transformers 5, ``BertTokenizer(vocab_file=...)`` maps every Chinese
    character to one id.
    """
    if len(set(vocab)) != len(vocab):
        raise ExportError("the checkpoint's vocab has duplicate tokens; ids would not round-trip through vocab.txt")
    settings = settings or {}
    lowercase, chinese = settings.get("lowercase"), settings.get("handle_chinese_chars")
    return BertTokenizer(vocab=OrderedDict((token, index) for index, token in enumerate(vocab)),
                         do_lower_case=True if lowercase is None else bool(lowercase),
                         strip_accents=settings.get("strip_accents"),
                         tokenize_chinese_chars=True if chinese is None else bool(chinese))


def wordpiece_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a tokenizer's settings that :func:`build_tokenizer` takes (what a bundle records)."""
    settings = settings or {}
    return {key: settings.get(key) for key in ("lowercase", "strip_accents", "handle_chinese_chars")}


def tokenizer_settings(tokenizer: BertTokenizer, max_length: int) -> dict[str, Any]:
    """What a re-implementation needs, stored in labels/golden files and in the Core ML metadata."""
    special = {name: {"token": getattr(tokenizer, f"{name}_token"), "id": getattr(tokenizer, f"{name}_token_id")}
               for name in ("cls", "sep", "pad", "unk")}
    # transformers 5 tokenizers are `tokenizers`-backed: read the exact normalizer and WordPiece settings there.
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    normalizer = backend.get("normalizer") or {}
    wordpiece = {k: v for k, v in (backend.get("model") or {}).items() if k != "vocab"}
    return {
        "type": "bert-wordpiece",
        "vocab_file": "vocab.txt: token i on line i; split on \\n only (tokens may contain U+2028)",
        "vocab_size": len(tokenizer),
        "lowercase": normalizer.get("lowercase"),
        "strip_accents": normalizer.get("strip_accents"),  # None: follows lowercase (accents stripped when lowering)
        "handle_chinese_chars": normalizer.get("handle_chinese_chars"),  # a space around every CJK character
        "clean_text": normalizer.get("clean_text"),  # control characters removed, whitespace -> space
        "pre_tokenizer": (backend.get("pre_tokenizer") or {}).get("type"),  # split on whitespace and punctuation
        "wordpiece_prefix": wordpiece.get("continuing_subword_prefix"),
        "max_input_chars_per_word": wordpiece.get("max_input_chars_per_word"),  # longer words become [UNK]
        "special_tokens": special,
        "max_length": max_length,
        "normalization": "NFKC, whitespace runs collapsed to one space, stripped (before tokenizing)",
        "normalization_id": NORMALIZATION,
        "layout": "[CLS] tokens [SEP], truncated to max_length keeping [SEP]; pad right with [PAD], "
                  "attention_mask 1 for real tokens and 0 for padding",
    }


def write_vocab(vocab: list[str], path: Path) -> None:
    """One token a line, line i = id i, joined by "\\n" with no trailing newline (so a split gives len(vocab))."""
    if any("\n" in token or "\r" in token for token in vocab):
        raise ExportError("a vocab token contains a line break; it cannot be written as vocab.txt")
    write_text(path, "\n".join(vocab))


def write_labels(label_names: list[str], path: Path) -> None:
    write_json(path, label_names)


def golden_tokens(tokenizer: BertTokenizer, texts: list[str], max_length: int) -> dict[str, Any]:
    cases = []
    for text in texts:
        normalized = normalize(text)
        ids = tokenizer(normalized, truncation=True, max_length=max_length)["input_ids"]
        cases.append({"text": text, "normalized": normalized, "tokens": tokenizer.convert_ids_to_tokens(ids),
                      "input_ids": list(ids)})
    return {"tokenizer": tokenizer_settings(tokenizer, max_length), "cases": cases}


def write_golden_tokens(tokenizer: BertTokenizer, texts: list[str], max_length: int, path: Path) -> None:
    write_json(path, golden_tokens(tokenizer, texts, max_length))
