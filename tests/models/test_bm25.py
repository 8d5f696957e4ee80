"""The BM25 index: top-K candidates and pair scores agree."""

from __future__ import annotations

import numpy as np
import pytest


def test_bm25_top_k_and_pair_scores_agree(index):
    ids, scores = index.top_k("cordless drill", 3)
    assert ids[0] == "drill" and list(ids) == ["drill", "bits"], "items without a matching term are dropped"
    assert scores[0] > scores[1] > 0
    pair = index.score_pairs(["cordless drill", "cordless drill", "unknown words"], ["drill", "sofa", "drill"])
    assert pair[0] == pytest.approx(scores[0]) and pair[1] == 0 and pair[2] == 0
    assert index.score_pairs(["drill"], ["not-in-catalog"])[0] == 0


def test_score_items_scores_only_the_candidates_exactly_as_the_whole_catalog_would():
    """The serving path looks each candidate up in the query terms' posting lists instead of scoring every item:
    bit-identical to bm25s's full scoring, repeated terms, unknown terms and unknown ids included."""
    from relevance.models.bm25 import BM25Index

    rng = np.random.default_rng(0)
    words = [f"w{n}" for n in range(40)]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(300)]
    ids = [f"item-{n}" for n in range(300)]
    index = BM25Index(np.array(ids, dtype=object), texts)
    for query in ["w1 w2", "w3 w3 w7", "w5 nothing", "nothing at all", "w0 w1 w2 w3 w4 w5 w6 w7"]:
        everything = index._scores(query)
        candidates = list(rng.choice(ids, 60, replace=False)) + ["unknown-item"]
        expected = np.array([everything[ids.index(i)] if i in ids else 0.0 for i in candidates], dtype=np.float32)
        np.testing.assert_array_equal(index.score_items(query, candidates), expected)
