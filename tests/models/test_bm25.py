"""The BM25 index: top-K candidates and pair scores agree."""

from __future__ import annotations

import pytest


def test_bm25_top_k_and_pair_scores_agree(index):
    ids, scores = index.top_k("cordless drill", 3)
    assert ids[0] == "drill" and list(ids) == ["drill", "bits"], "items without a matching term are dropped"
    assert scores[0] > scores[1] > 0
    pair = index.score_pairs(["cordless drill", "cordless drill", "unknown words"], ["drill", "sofa", "drill"])
    assert pair[0] == pytest.approx(scores[0]) and pair[1] == 0 and pair[2] == 0
    assert index.score_pairs(["drill"], ["not-in-catalog"])[0] == 0
