from __future__ import annotations

from pathlib import Path

import pytest

from lightning_modules.corpus import Example, clean, limit_per_class, normalize_text, read_raw, stratified_split
from lightning_modules.errors import PocketbertError


def test_normalize_removes_nlpcc_separators_but_keeps_real_spaces() -> None:
    assert normalize_text("在 等 i O S 1 0 ？", char_separated=True) == "在等iOS10?"  # NFKC: full-width ？ -> ?
    assert normalize_text("i P h o n e  7", char_separated=True) == "iPhone 7"  # a double space was a real space
    assert normalize_text("  Ｈｅｌｌｏ　世界  ") == "Hello 世界"


def test_clean_drops_empty_duplicates_and_reports_conflicts() -> None:
    rows = [Example("体育 新闻", "sports"), Example("  ", "sports"), Example("体育 新闻", "sports"),
            Example("体育 新闻", "finance"), Example("股票大涨", "finance"), Example("散文一篇", "essay")]
    kept, report = clean(rows, "x", char_separated=False, whitelist=["sports", "finance"])
    assert [(e.text, e.label) for e in kept] == [("体育 新闻", "sports"), ("股票大涨", "finance")]
    assert report.empty_dropped == 1 and report.duplicates_dropped == 2
    assert report.conflicts == [("体育 新闻", ["sports", "finance"])]
    assert report.outside_whitelist == {"essay": 1}
    assert "1 label conflicts" in report.summary()


def test_stratified_split_keeps_proportions_and_is_seeded() -> None:
    rows = [Example(f"t{i}", "a" if i % 4 else "b") for i in range(400)]
    train, val, test = stratified_split(rows, (0.7, 0.15, 0.15), seed=1)
    assert (len(train), len(val), len(test)) == (280, 60, 60)
    assert sum(e.label == "b" for e in val) == 15  # 100 'b' rows -> 15% in val
    assert {e.text for e in train}.isdisjoint({e.text for e in test})
    assert [e.text for e in stratified_split(rows, (0.7, 0.15, 0.15), seed=1)[2]] == [e.text for e in test]
    with pytest.raises(PocketbertError, match="sum"):
        stratified_split(rows, (0.5, 0.2, 0.2), seed=1)


def test_limit_per_class() -> None:
    rows = [Example(f"t{i}", str(i % 3)) for i in range(30)]
    limited = limit_per_class(rows, 4, seed=0)
    assert sorted(e.label for e in limited) == ["0"] * 4 + ["1"] * 4 + ["2"] * 4


def test_real_corpora_read(data_dir: Path) -> None:
    nlpcc = read_raw(data_dir / "nlpcc2017/headlines.char.tsv", "nlpcc_char")
    assert len(nlpcc) == 36000 and nlpcc[0].label == "baby"
    names = (data_dir / "thucnews/class.txt").read_text("utf-8").split()
    thuc = read_raw(data_dir / "thucnews/test.txt", "thucnews", class_names=names)
    assert len(thuc) == 10000 and set(e.label for e in thuc) == set(names)
    tnews = read_raw(data_dir / "tnews/train_0.json", "tnews")
    assert len(tnews) == 240 and all(e.label.startswith("news_") for e in tnews)


def test_thucnews_reports_its_label_conflicts_and_keeps_the_first_label(data_dir: Path) -> None:
    names = (data_dir / "thucnews/class.txt").read_text("utf-8").split()
    raw = read_raw(data_dir / "thucnews/test.txt", "thucnews", class_names=names)
    kept, report = clean(raw, "test.txt", char_separated=False, whitelist=None)
    # one headline is labelled finance and, further down, stocks: reported, kept once with its first label
    assert report.conflicts == [("玉米涨价VS玉米油走弱", ["finance", "stocks"])]
    assert [e.label for e in kept if e.text == "玉米涨价VS玉米油走弱"] == ["finance"]
    assert (len(raw), report.duplicates_dropped, len(kept)) == (10000, 11, 9989)
    assert ("1 label conflicts (same text, different labels; first kept): '玉米涨价VS玉米油走弱' -> ['finance', "
            "'stocks']") in report.summary()
    train = read_raw(data_dir / "thucnews/train.txt", "thucnews", class_names=names)
    _, train_report = clean(train, "train.txt", char_separated=False, whitelist=None)
    assert train_report.conflicts == [] and train_report.duplicates_dropped == 1  # the official train split is clean


@pytest.mark.parametrize(
    ("fmt", "content", "kwargs"),
    [
        ("csv", "title,topic\n体育新闻,sports\n股票大涨,finance\n", {"text_field": "title", "label_field": "topic"}),
        ("tsv", "text\tlabel\n体育新闻\tsports\n股票大涨\tfinance\n", {}),
        ("jsonl", '{"t": "体育新闻", "y": "sports"}\n{"t": "股票大涨", "y": "finance"}\n',
         {"text_field": "t", "label_field": "y"}),
    ],
)
def test_generic_formats(tmp_path: Path, fmt: str, content: str, kwargs: dict[str, str]) -> None:
    path = tmp_path / f"data.{fmt}"
    path.write_text(content, encoding="utf-8")
    rows = read_raw(path, fmt, **kwargs)  # type: ignore[arg-type]
    assert [(e.text, e.label) for e in rows] == [("体育新闻", "sports"), ("股票大涨", "finance")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"sports\t\xff\xfe bad\n", "not valid UTF-8"),
        (b"\t\xe4\xbd\x93 \xe8\x82\xb2\n", "no label"),
        (b"just one column\n", "two tab-separated columns"),
    ],
)
def test_bad_files_give_one_actionable_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    with pytest.raises(PocketbertError, match=message) as info:
        read_raw(path, "nlpcc_char")
    assert "\n" not in str(info.value)


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PocketbertError, match="NEWS_DATA_DIR"):
        read_raw(tmp_path / "nope.tsv", "nlpcc_char")


def test_delimited_with_any_delimiter_string_and_columns_by_index(tmp_path: Path) -> None:
    path = tmp_path / "toutiao.txt"  # Toutiao's raw layout: id_!_code_!_category_!_title_!_keywords, no header
    path.write_text('6551_!_101_!_news_culture_!_京城"博物馆",值得一去_!_保利,马未都\n'
                    "6552_!_103_!_news_sports_!_国足\t晋级_!_\n\n", encoding="utf-8")
    rows = read_raw(path, "delimited", delimiter="_!_", text_field=3, label_field=2)
    # no quoting: quotes, commas and tabs are text
    assert [(e.text, e.label) for e in rows] == [('京城"博物馆",值得一去', "news_culture"),
                                                 ("国足\t晋级", "news_sports")]
    with_header = tmp_path / "with_header.txt"
    with_header.write_text("id|title|cat\n1|体育新闻|sports\n", encoding="utf-8")
    rows = read_raw(with_header, "delimited", delimiter="|", text_field="title", label_field="cat")
    assert [(e.text, e.label) for e in rows] == [("体育新闻", "sports")]


def test_delimited_row_with_a_stray_delimiter_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "toutiao.txt"
    path.write_text("1_!_101_!_news_a_!_标题一_!_\n2_!_102_!_news_b_!_标题_!_二_!_\n", encoding="utf-8")
    with pytest.raises(PocketbertError, match=r":2: 6 fields where the first row has 5; a field may contain the "
                                              r"delimiter '_!_'"):
        read_raw(path, "delimited", delimiter="_!_", text_field=3, label_field=2)


CSV_QUOTING = ('text,label\n"逗号,在引号里",a\n"换行\n在引号里",b\n"双""引号""",c\n他说"好"呀,d\n'
               '"开头引号"后文,e\n  前后空格  ,f\n')
CSV_EXPECTED = [("逗号,在引号里", "a"), ("换行\n在引号里", "b"), ('双"引号"', "c"), ('他说"好"呀', "d"),
                ("开头引号后文", "e"), ("  前后空格  ", "f")]


def test_csv_quoting_rules(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(CSV_QUOTING, encoding="utf-8")
    assert [(e.text, e.label) for e in read_raw(path, "csv")] == CSV_EXPECTED
    tsv = tmp_path / "data.tsv"
    tsv.write_text(CSV_QUOTING.replace(",", "\t").replace('"逗号\t在引号里"', '"制表\t在引号里"'), encoding="utf-8")
    assert [(e.text, e.label) for e in read_raw(tsv, "tsv")] == [("制表\t在引号里", "a"), *CSV_EXPECTED[1:]]
    # the same file through `delimited` (no quoting): the leading quote stays text
    raw = tmp_path / "raw.tsv"
    raw.write_text('"开头引号"后文\te\n他说"好"呀\td\n', encoding="utf-8")
    assert [e.text for e in read_raw(raw, "delimited", delimiter="\t", text_field=0, label_field=1)] == [
        '"开头引号"后文', '他说"好"呀']


def test_csv_without_header_by_index(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("sports,体育新闻\nfinance,\"股票,大涨\"\n", encoding="utf-8")
    rows = read_raw(path, "csv", text_field=1, label_field=0)  # both indices: no header row
    assert [(e.text, e.label) for e in rows] == [("体育新闻", "sports"), ("股票,大涨", "finance")]


@pytest.mark.parametrize(("fmt", "content", "kwargs", "message"), [
    ("csv", "a,b\n1,2\n", {"text_field": "text", "has_header": False}, "is a column name but the file has no header"),
    ("csv", "title,topic\n体育,sports\n", {}, r"header has no column 'text' \(has \['title', 'topic'\]\)"),
    ("jsonl", '{"t": "x", "y": "a"}\n', {"text_field": 0, "label_field": 1}, "give text_field/label_field as key"),
    ("delimited", "a_!_b\n", {"text_field": 0, "label_field": 1}, "format delimited needs a delimiter"),
    ("csv", 'text,label\n"never closed,a\n', {"label_field": 1, "text_field": 0},
     "row has no label"),
])
def test_reader_settings_errors(tmp_path: Path, fmt: str, content: str, kwargs: dict[str, object],
                                message: str) -> None:
    path = tmp_path / f"data.{fmt}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PocketbertError, match=message) as info:
        read_raw(path, fmt, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
