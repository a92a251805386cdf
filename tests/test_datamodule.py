from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.datamodule import NewsDataModule
from lightning_modules.errors import PocketbertError
from tests.conftest import NEWS16


def make_nlpcc(cache_dir: Path, **kwargs: object) -> NewsDataModule:
    defaults: dict[str, object] = {"train_file": "nlpcc2017/headlines.char.tsv", "labels": NEWS16,
                                   "limit_per_class": 40, "cache_dir": cache_dir, "batch_size": 8}
    return NewsDataModule(**{**defaults, **kwargs})  # type: ignore[arg-type]


def test_nlpcc_split_labels_and_batches(cache_dir: Path) -> None:
    dm = make_nlpcc(cache_dir)
    dm.setup("fit")
    sizes = {split: len(dm.datasets[split]) for split in ("train", "val", "test")}
    assert sizes == {"train": 16 * 28, "val": 16 * 6, "test": 16 * 6}  # 40 per class split 70/15/15
    assert dm.label_names == NEWS16  # whitelist order = label ids; essay and story dropped
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 8
    assert (batch["input_ids"][:, 0] == 101).all()  # [CLS]
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths.max() == batch["input_ids"].shape[1]  # padded to the longest row only
    assert all(batch["input_ids"][i, n - 1] == 102 for i, n in enumerate(lengths.tolist()))  # [SEP]
    assert torch.unique(dm.datasets["train"].labels).numel() == 16


def test_second_setup_reads_tokens_from_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_nlpcc(cache_dir).setup("fit")
    second = make_nlpcc(cache_dir)

    def exploding(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenized again although the cache holds these texts")

    monkeypatch.setattr(type(second.tokenizer), "__call__", exploding)
    second.setup("fit")
    assert all(second.datasets[s].tokens.from_cache for s in ("train", "val", "test"))
    assert len(list(cache_dir.glob("tokens-*.pt"))) == 3


def test_thucnews_official_splits_and_class_names(cache_dir: Path) -> None:
    dm = NewsDataModule(train_file="thucnews/train.txt", val_file="thucnews/dev.txt", test_file="thucnews/test.txt",
                        format="thucnews", label_names_file="thucnews/class.txt", limit_per_class=20,
                        cache_dir=cache_dir)
    dm.setup("fit")
    assert dm.label_names[:3] == ["finance", "realty", "stocks"] and len(dm.label_names) == 10
    assert len(dm.datasets["test"]) == 200 and len(dm.datasets["val"]) == 200


def test_tnews_with_golden_test_file(cache_dir: Path) -> None:
    dm = NewsDataModule(train_file="tnews/train_0.json", val_file="tnews/dev_0.json", test_file="tnews/dev_0.json",
                        golden_test_file="tnews/test_public.json", format="tnews",
                        label_names_file="tnews/label_index2en2zh.json", cache_dir=cache_dir)
    dm.setup("test")
    assert len(dm.label_names) == 15 and "news_story" in dm.label_names
    assert len(dm.datasets["test"]) > 1900  # the golden file (2,010 rows less duplicates), not dev_0


def test_whitelist_label_without_rows_is_an_error(cache_dir: Path) -> None:
    with pytest.raises(PocketbertError, match="no training rows"):
        make_nlpcc(cache_dir, labels=[*NEWS16, "weather"]).setup("fit")


def test_labels_outside_whitelist_in_val_file_are_dropped_and_reported(cache_dir: Path, tmp_path: Path) -> None:
    val = tmp_path / "val.tsv"
    val.write_text("sports\t足 球 联 赛\nweather\t下 雨\nfinance\t股 市 大 涨\nweather\t刮 风\n", encoding="utf-8")
    dm = make_nlpcc(cache_dir, val_file=str(val), test_file=str(val), labels=["sports", "finance"])
    dm.setup("fit")  # unknown_labels: drop (the default)
    assert dm.texts["val"] == ["足球联赛", "股市大涨"] and dm.true_labels["val"] == ["sports", "finance"]
    report = dm.cleaned_splits["val"][1]
    assert report.outside_whitelist == {"weather": 2}
    assert "val.tsv: read 4, kept 2; dropped 0 empty, 0 duplicates, 2 outside the label list {'weather': 2}" in (
        report.summary())


def test_given_eval_files_report_rows_shared_with_the_training_split(cache_dir: Path, tmp_path: Path) -> None:
    train = make_nlpcc(cache_dir, labels=["sports", "finance"])
    train.setup("fit")
    seen = train.cleaned_splits["train"][0][:3]  # three training headlines, copied into the given eval files
    val, golden = tmp_path / "val.tsv", tmp_path / "golden.tsv"
    val.write_text("".join(f"{e.label}\t{' '.join(e.text)}\n" for e in seen) + "sports\t全 新 标 题\n", "utf-8")
    golden.write_text(f"{seen[0].label}\t{' '.join(seen[0].text)}\nfinance\t另 一 条 新 标 题\n", "utf-8")
    dm = make_nlpcc(cache_dir, labels=["sports", "finance"], val_file=str(val), test_file=str(val),
                    golden_test_file=str(golden))
    dm.setup("fit")
    assert dm.train_overlap == {"val": 3, "test": 1}
    assert dm.overlap_summary() == [
        f"warning: 3 of 4 val rows ({val}) also appear in the training split: their scores measure memory, not "
        "generalization; remove them from one of the files",
        f"warning: 1 of 2 test rows ({golden}) also appear in the training split: their scores measure memory, not "
        "generalization; remove them from one of the files"]
    assert train.train_overlap == {} and train.overlap_summary() == []  # a stratified split shares no text


def rare_corpus(tmp_path: Path) -> Path:
    """A tsv with two classes of 40 real NLPCC headlines and one of 10."""
    from lightning_modules.corpus import normalize_text, read_raw
    from tests.conftest import DATA_DIR

    rows = read_raw(DATA_DIR / "nlpcc2017/headlines.char.tsv", "nlpcc_char")
    wanted = {"sports": 40, "finance": 40, "car": 10}
    lines = ["text\tlabel"]
    for example in rows:
        if wanted.get(example.label, 0) > 0:
            wanted[example.label] -= 1
            lines.append(f"{normalize_text(example.text, char_separated=True)}\t{example.label}")
    path = tmp_path / "corpus.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("action", ["warn", "drop"])
def test_rare_classes_are_named_and_warned_about_or_dropped(tmp_path: Path, cache_dir: Path, action: str) -> None:
    rare_corpus(tmp_path)
    dm = NewsDataModule(train_file="corpus.tsv", format="tsv", data_dir=tmp_path, cache_dir=cache_dir,
                        min_rows_per_class=30, rare_classes=action)  # type: ignore[arg-type]
    dm.setup("fit")
    summary = dm.cleaned_splits["train"][1].summary()
    if action == "warn":
        assert dm.label_names == ["car", "finance", "sports"]
        assert "warning: 1 class(es) with fewer than 30 rows kept: car 10;" in summary
        assert sum(label == "car" for label in dm.true_labels["test"]) == 2  # 15% of 10: a score on 2 rows
    else:
        assert dm.label_names == ["finance", "sports"]
        assert "dropped 1 class(es) with fewer than 30 rows (min_rows_per_class): car 10" in summary
        assert all("car" not in dm.true_labels[split] for split in ("train", "val", "test"))
        assert len(dm.datasets["train"]) + len(dm.datasets["val"]) + len(dm.datasets["test"]) == 80


def test_default_data_dir_is_shared_data_beside_the_repository(cache_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_modules import datamodule

    monkeypatch.delenv("NEWS_DATA_DIR")
    assert datamodule.DEFAULT_DATA_DIR.is_dir()  # this checkout has ../shared/data beside it, as CI does
    dm = make_nlpcc(cache_dir)
    assert dm.resolved_data_dir == datamodule.DEFAULT_DATA_DIR.resolve()


def test_resumable_sampler_shards_an_epoch_for_ddp_and_resumes_each_shard() -> None:
    """What 2 DDP ranks get: equal-length shards covering the epoch (padded like DistributedSampler), batches still
    length-grouped, and a resumed epoch skipping the samples this rank trained (the slow DDP test runs it end to
    end)."""
    from lightning_modules.batching import ResumableSampler

    lengths = torch.randint(3, 60, (203,), generator=torch.Generator().manual_seed(0))
    ranks = [ResumableSampler(203, 7, lengths, batch_size=4, pool_batches=5, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
    shards = [list(sampler) for sampler in ranks]
    assert [len(shard) for shard in shards] == [len(sampler) for sampler in ranks] == [102, 102]
    assert set(shards[0]) | set(shards[1]) == set(range(203))  # one row padded in: 204 = 2 x 102
    one_process = ResumableSampler(203, 7, lengths, batch_size=8, pool_batches=5)
    one_process.set_epoch(1)
    assert sorted(shards[0] + shards[1]) == sorted([*one_process, one_process.order()[0]])
    # step k of both ranks is one length-sorted group of 8: each rank's batch spans few lengths
    def mean_spread(shard: list[int]) -> float:
        spans = [int(lengths[shard[i:i + 4]].max() - lengths[shard[i:i + 4]].min()) for i in range(0, 96, 4)]
        return sum(spans) / len(spans)

    unsorted = ResumableSampler(203, 7, None, batch_size=4, num_replicas=2, rank=0)
    assert max(mean_spread(shard) for shard in shards) < 0.4 * mean_spread(list(unsorted))  # measured: 9 vs 32
    resumed = ResumableSampler(203, 7, lengths, batch_size=4, pool_batches=5, num_replicas=2, rank=1)
    resumed.set_epoch(1)
    resumed.resume(1, 5 * 4)  # 5 batches of this rank were trained
    assert list(resumed) == shards[1][20:] and len(resumed) == 102  # Lightning counts the whole epoch's batches


def test_shuffle_seed_changes_the_order_not_the_split(cache_dir: Path) -> None:
    default, same, reshuffled = (make_nlpcc(cache_dir, **seeds) for seeds in
                                 ({}, {"shuffle_seed": 42}, {"shuffle_seed": 7}))
    for dm in (default, same, reshuffled):
        dm.setup("fit")
    assert default.texts == reshuffled.texts  # the same rows in every split

    def first_indices(dm: NewsDataModule) -> list[int]:
        return next(iter(dm.train_dataloader()))["index"].tolist()

    assert first_indices(default) == first_indices(same)  # None: split_seed's order, as before the option
    assert first_indices(default) != first_indices(reshuffled)
