"""Resolving tokenizers and pretrained models from local paths or the Hugging Face Hub, failing fast offline.

``from_pretrained`` on an unreachable hub retries for most of a minute before it gives up; these helpers try
the local cache first and then probe the hub endpoint with a short timeout, so an offline run stops in seconds
with a message that names the offline recipes.
"""

from __future__ import annotations

import json
import os
import socket
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase

from lightning_modules.errors import PocketbertError
from lightning_modules.runs import resolve_run_path

# The bert-base-chinese WordPiece vocabulary ships inside the package (a tokenizer asset, 110 KB), so a data dir needs
# no copy of it. Recipes name it PACKAGED_VOCAB_NAME; the older relative name vocab/bert-base-chinese-vocab.txt (from
# the shared data dir) falls back to it when the file is not there, since the content is the same.
PACKAGED_VOCAB_NAME = "bert-base-chinese-vocab"
PACKAGED_VOCAB = Path(__file__).resolve().parent / "assets" / "bert-base-chinese-vocab.txt"

OFFLINE_HINT = (
    "offline? use an offline recipe instead (e.g. `python -m recipes fit --config news16_cpu.yaml`), "
    "or point the setting at a local directory holding the model"
)


DISTILL_OFFLINE_HINT = ("offline? distil with an offline recipe instead (e.g. `python -m recipes fit --config "
                        "news16_distill_cpu.yaml`, a from-scratch student), or point the setting at a local directory")


@contextmanager
def distillation_offline_hint() -> Iterator[None]:
    """Hub errors name the offline distillation recipe rather than the offline teacher recipe."""
    try:
        yield
    except PocketbertError as err:
        if OFFLINE_HINT not in str(err):
            raise
        raise PocketbertError(str(err).replace(OFFLINE_HINT, DISTILL_OFFLINE_HINT)) from None


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub endpoint accepts a TCP connection within ``timeout_s`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_hub(name: str, what: str) -> None:
    """Raise a one-line :class:`PocketbertError` unless the hub can serve ``name``."""
    if not hub_reachable():
        raise PocketbertError(f"cannot download {what} '{name}': the Hugging Face Hub is unreachable; {OFFLINE_HINT}")


def read_vocab_file(path: Path) -> OrderedDict[str, int]:
    """A WordPiece ``vocab.txt`` (one token a line, id = line number) as an ordered token -> id map."""
    with path.open(encoding="utf-8") as handle:
        return OrderedDict((line.rstrip("\n"), index) for index, line in enumerate(handle))


def load_tokenizer(spec: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a vocab file, a local directory, the packaged vocabulary or a hub name.

    A bare ``vocab.txt`` goes through ``BertTokenizer(vocab=dict)``: in transformers 5 both
    ``BertTokenizer(vocab_file=...)`` and ``BertTokenizerFast(vocab_file=...)`` silently map every Chinese
    character to one id.
    """
    path = packaged_vocab(spec) or Path(spec)
    if path.is_file():
        return BertTokenizer(vocab=read_vocab_file(path))
    if path.is_dir():
        if not (path / "tokenizer.json").exists() and (path / "vocab.txt").exists():
            return BertTokenizer(vocab=read_vocab_file(path / "vocab.txt"))
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if str(spec).startswith((".", "/", "~")) or str(spec).endswith(".txt"):
        if "tb_logs" in path.parts:  # a run's output (e.g. a trained student's export/vocab.txt): say which run
            raise PocketbertError(f"tokenizer path '{spec}' does not exist: run {run_hint(path)} first")
        raise PocketbertError(f"tokenizer path '{spec}' does not exist; check --data.tokenizer or NEWS_DATA_DIR")
    try:
        return AutoTokenizer.from_pretrained(str(spec), local_files_only=True, trust_remote_code=trust_remote_code)
    except OSError:
        pass  # not cached: needs the hub (checked outside the except block to keep the error chain short)
    require_hub(str(spec), "tokenizer")
    return AutoTokenizer.from_pretrained(str(spec), trust_remote_code=trust_remote_code)


def run_hint(path: Path) -> str:
    """``tb_logs/<name>/...`` is written by the recipe ``<name>.yaml``: the command that makes it."""
    parts = path.parts
    if "tb_logs" in parts and parts.index("tb_logs") + 1 < len(parts):
        return f"python -m recipes fit --config {parts[parts.index('tb_logs') + 1]}.yaml"
    return "the recipe that writes it"
def packaged_vocab(spec: str | Path) -> Path | None:
    """The packaged bert-base-chinese vocab when ``spec`` names it: ``bert-base-chinese-vocab``, or a path to a
    ``bert-base-chinese-vocab.txt`` that does not exist (recipes written for the shared data dir's copy)."""
    if str(spec) == PACKAGED_VOCAB_NAME:
        return PACKAGED_VOCAB
    path = Path(spec).expanduser()
    if path.name == PACKAGED_VOCAB.name and not path.exists():
        return PACKAGED_VOCAB
    return None


def resolve_pretrained(name_or_path: str) -> tuple[str, bool]:
    """``(name_or_path, local_files_only)`` for ``from_pretrained``, raising fast if the hub is needed but offline."""
    local = resolve_run_path(name_or_path)  # tb_logs/<name>/latest/pretrained: the folder of the run it names
    if local.is_dir():
        return str(local), True
    if names_local_folder(name_or_path):
        raise PocketbertError(f"pretrained model folder {name_or_path} not found: run {run_hint(Path(name_or_path))} "
                              "first, or set model.init_args.pretrained to an existing folder")
    if in_hub_cache(name_or_path):
        return name_or_path, True
    require_hub(name_or_path, "pretrained model")
    return name_or_path, False


def names_local_folder(name_or_path: str) -> bool:
    """A hub name is "name" or "org/name"; anything longer, or starting like a path, is a local folder."""
    return name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1


def in_hub_cache(name_or_path: str) -> bool:
    """Whether the Hugging Face cache holds the model's ``config.json`` (loadable offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name_or_path, "config.json"), str)
    except Exception:  # any cache-probe failure just means "not cached"
        return False


def vocab_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's vocabulary in id order, as written to ``vocab.txt`` for apps."""
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return [token for token, _ in by_id]


# Tokenizer classes a WordPiece vocabulary plus these settings rebuild exactly (what a checkpoint and vocab.txt hold).
WORDPIECE_CLASSES = ("BertTokenizer", "BertTokenizerFast")


def tokenizer_settings(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What decides token ids beside the vocabulary: the class and the normalizer's lower-casing, accent stripping,
    CJK splitting and text cleaning (read from the ``tokenizers`` backend when there is one: that is what runs)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer: dict[str, Any] = {}
    if backend is not None:
        normalizer = json.loads(backend.to_str()).get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        normalizer = {"lowercase": getattr(tokenizer, "do_lower_case", None),
                      "strip_accents": getattr(tokenizer, "strip_accents", None),
                      "handle_chinese_chars": getattr(tokenizer, "tokenize_chinese_chars", None),
                      "clean_text": None, "type": normalizer.get("type")}
    return {"class": type(tokenizer).__name__, "lowercase": normalizer.get("lowercase"),
            "strip_accents": normalizer.get("strip_accents"),
            "handle_chinese_chars": normalizer.get("handle_chinese_chars"), "clean_text": normalizer.get("clean_text")}


def wordpiece_tokenizer(vocab: list[str], settings: dict[str, Any] | None = None) -> BertTokenizer:
    """A WordPiece tokenizer over exactly ``vocab`` (id = position) with a checkpoint's ``tokenizer_settings``
    (bert-base-chinese's defaults for checkpoints written before the settings were saved)."""
    settings = settings or {}
    lowercase = settings.get("lowercase")
    chinese = settings.get("handle_chinese_chars")
    return BertTokenizer(vocab=OrderedDict((token, i) for i, token in enumerate(vocab)),
                         do_lower_case=True if lowercase is None else bool(lowercase),
                         strip_accents=settings.get("strip_accents"),
                         tokenize_chinese_chars=True if chinese is None else bool(chinese))
