"""benchmarks/linear_ceiling.py: the companion's kind of feature set (every unigram, the K most frequent bigrams)."""

from __future__ import annotations

import numpy as np

from benchmarks.linear_ceiling import char_counts, top_bigram_columns


def test_top_bigram_columns_keep_every_unigram_and_the_most_frequent_bigrams() -> None:
    train = ["新闻新闻新闻", "新闻体育", "体育体育", "股市"]
    counts, test, lengths = char_counts(train, ["新闻股市"], longest=2)
    assert counts.shape[1] == test.shape[1] == len(lengths)
    columns = top_bigram_columns(counts, lengths, keep=2)
    totals = np.asarray(counts.sum(axis=0)).ravel()
    kept_bigrams = [c for c in columns if lengths[c] == 2]
    assert set(np.flatnonzero(lengths == 1)) <= set(columns.tolist())
    assert len(kept_bigrams) == 2
    dropped = [c for c in np.flatnonzero(lengths == 2) if c not in kept_bigrams]
    assert min(totals[kept_bigrams]) >= max(totals[dropped])
    # "新闻" occurs 4 times and "体育" 3 times; every other bigram once or twice
    assert sorted(totals[kept_bigrams].tolist()) == [3, 4]
