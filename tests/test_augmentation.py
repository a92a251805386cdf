from __future__ import annotations

import random
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from lightning_modules import BackTranslation, EdaAugmentation
from lightning_modules.augmentation import augmented_rows, cilin_path, edit_characters, load_synonyms, segment
from lightning_modules.datamodule import NewsDataModule
from lightning_modules.errors import PocketbertError
from tests.conftest import NEWS16

HEADLINES = ["中国足球队战胜对手", "每一次胎动都是宝宝想和爸妈聊会儿天", "唐艺昕与陈伟霆为初秋的情侣做出了典范"]


def test_cilin_resource_holds_real_synonym_groups() -> None:
    synonyms = load_synonyms(cilin_path())
    assert len(synonyms) > 40_000  # HIT Cilin extended: about 45k words in '=' groups
    assert "人类" in synonyms["全人类"] and "生人" in synonyms["人类"]  # Aa01A02= 人类 生人 全人类
    assert "战胜" not in synonyms["战胜"]


def test_synonym_replacement_uses_the_resource() -> None:
    eda = EdaAugmentation(operations=["synonym"], copies=3, seed=0)
    assert segment(HEADLINES[0]) == ["中国足球队", "战胜", "对手"]
    copies = eda.augment([HEADLINES[0]])[0]
    assert copies == ["中国足球队常胜对手", "中国足球队力挫对手", "中国足球队节节胜利对手"]
    for copy in copies:  # one word of three replaced (rate 0.1, at least one), by a Cilin synonym of 战胜
        assert copy.startswith("中国足球队") and copy.endswith("对手")
        assert copy[len("中国足球队") : -len("对手")] in eda.synonyms["战胜"]


def test_augmentation_is_deterministic_under_its_seed() -> None:
    first = EdaAugmentation(copies=4, seed=3).augment(HEADLINES)
    assert EdaAugmentation(copies=4, seed=3).augment(HEADLINES) == first
    # a text's copies depend on (seed, copy, text) only: not on the other rows or their order
    assert EdaAugmentation(copies=4, seed=3).augment(HEADLINES[::-1]) == first[::-1]
    assert EdaAugmentation(copies=4, seed=4).augment(HEADLINES) != first


def test_character_edits() -> None:
    text = HEADLINES[2]  # 19 characters: rate 0.1 makes 2 edits
    deleted = edit_characters(text, "delete", 0.1, random.Random(0))
    assert len(deleted) == len(text) - 2 and Counter(deleted) <= Counter(text)
    swapped = edit_characters(text, "swap", 0.1, random.Random(0))
    assert swapped != text and Counter(swapped) == Counter(text)
    inserted = edit_characters(text, "insert", 0.1, random.Random(0))
    assert len(inserted) == len(text) + 2 and set(inserted) == set(text)  # no character from outside the headline
    assert edit_characters("好", "delete", 0.5, random.Random(0)) == "好"  # a headline keeps a character


def test_unchanged_and_repeated_copies_are_dropped() -> None:
    eda = EdaAugmentation(operations=["synonym"], copies=3)
    parents, texts = augmented_rows(eda, ["你好", *HEADLINES[:1]])  # 你好 has no replaceable word
    assert parents == [1, 1, 1] and len(set(texts)) == 3


def test_bad_settings_fail_in_one_line() -> None:
    for kwargs in ({"copies": 0}, {"rate": 0.9}, {"operations": []}, {"synonyms_file": Path("/nope/cilin.txt")}):
        with pytest.raises(PocketbertError) as err:
            EdaAugmentation(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)


def make(cache_dir: Path, **kwargs: object) -> NewsDataModule:
    return NewsDataModule(train_file="nlpcc2017/headlines.char.tsv", labels=NEWS16, limit_per_class=20,
                          cache_dir=cache_dir, batch_size=16, **kwargs)  # type: ignore[arg-type]


def test_datamodule_augments_training_rows_only(cache_dir: Path) -> None:
    plain, aug = make(cache_dir), make(cache_dir, augmentation=EdaAugmentation(copies=2, seed=1))
    plain.setup("fit")
    aug.setup("fit")
    n = len(plain.datasets["train"])
    for split in ("train", "val", "test"):  # the splits themselves are untouched
        assert aug.texts[split] == plain.texts[split]
        assert torch.equal(aug.datasets[split].tokens.ids, plain.datasets[split].tokens.ids)
    assert len(aug.val_dataloader().dataset) == len(plain.datasets["val"])  # type: ignore[arg-type]
    assert len(aug.test_dataloader().dataset) == len(plain.datasets["test"])  # type: ignore[arg-type]
    extra = aug.augmented_train
    assert extra is not None and 1.8 * n < len(extra.tokens) <= 2 * n  # 2 copies a row, a few unchanged dropped
    rows = [extra[i] for i in range(len(extra))]
    seen = Counter(row["index"] for row in rows)
    assert sorted(seen) == list(range(n))  # every row, then its copies indexed by the row they were made from
    assert sum(count == 3 for count in seen.values()) > 0.9 * n
    for row in rows[n:]:  # a copy carries its original's label and index (the teacher logits' key)
        assert row["label"] == plain.datasets["train"].labels[row["index"]]
    batches = list(aug.train_dataloader())
    assert sum(len(batch["labels"]) for batch in batches) == len(extra)
    assert {len(batch["labels"]) for batch in batches[:-1]} == {16}


def test_back_translation_fails_fast_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(PocketbertError) as err:
        BackTranslation(model="Helsinki-NLP/opus-mt-zh-en", back_model="Helsinki-NLP/opus-mt-en-zh")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message and "Helsinki-NLP/opus-mt-zh-en" in message and "offline" in message
    with pytest.raises(PocketbertError, match=r"folder \./no-such-model not found"):
        BackTranslation(model="./no-such-model", back_model="./no-such-model")


def test_augmentation_is_an_hparams_column() -> None:
    import yaml
    from jsonargparse import dict_to_namespace

    from recipes import CONFIGS_DIR
    from recipes.run_columns import VOCABULARY, run_columns

    recipe = yaml.safe_load((CONFIGS_DIR / "news16_augment_cpu.yaml").read_text())
    columns = run_columns(dict_to_namespace(recipe))
    assert columns["augmentation"] == "EdaAugmentation copies=1 operations=['synonym', 'delete', 'swap', 'insert'] " \
                                      "rate=0.1 seed=0"
    assert VOCABULARY["augmentation"] == "string"


def test_augmentation_benchmark_table_shows_the_baseline_and_both_arms_lead_over_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ on the path: undone after the test
    from benchmarks.augmentation import distinct_baselines, markdown, rung_row

    baseline = {"variant": "baseline", "model": "TF-IDF char 1-2-grams + LinearSVC(C=0.5)", "accuracy": 0.7740,
                "macro_f1": 0.7702, "train_examples": 11200}
    rows = [rung_row("distill", (10, 5), {"accuracy": 0.7800, "macro_f1": 0.7790},
                     {"accuracy": 0.7711, "macro_f1": 0.7700}, baseline),
            rung_row("ce", (10, 5), {"accuracy": 0.7600, "macro_f1": 0.7590},
                     {"accuracy": 0.7769, "macro_f1": 0.7750}, baseline)]
    lines = markdown(rows).splitlines()
    assert lines[0] == ("| rung | epochs without / with | accuracy without | with | gain (pts) | vs baseline without / "
                        "with (pts) | macro-F1 without | with |")
    # one baseline row (the rungs share their data), its figures under "without": it never sees augmented copies
    assert lines[2] == ("| linear baseline: TF-IDF char 1-2-grams + LinearSVC(C=0.5) (11,200 training texts) | - | "
                        "0.7740 | - | - | - | 0.7702 | - |")
    assert lines[3] == "| distill | 10 / 5 | 0.7800 | 0.7711 | -0.89 | +0.60 / -0.29 | 0.7790 | 0.7700 |"
    assert lines[4] == "| ce | 10 / 5 | 0.7600 | 0.7769 | +1.69 | -1.40 / +0.29 | 0.7590 | 0.7750 |"
    assert len(lines) == 5 and distinct_baselines(rows) == [baseline]
    assert rows[1]["vs_baseline_points"]["with"] == pytest.approx(0.29)
