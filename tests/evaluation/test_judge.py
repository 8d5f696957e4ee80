"""The judge: nDCG of rankings against the judge's grades of their union, agreement with humans, the floor."""

from __future__ import annotations

import numpy as np
import pytest

from relevance.data.schema import DataContractError
from relevance.evaluation.judge import agreement, judged_ndcg, require_agreement


def test_judged_ndcg_scores_each_ranking_on_the_union_of_top_k():
    grades = {"a": 2, "b": 0, "c": 1}
    tops = {"good": {"q": ["a", "c", "b"]}, "bad": {"q": ["b", "c", "a"]}}
    scores, judged = judged_ndcg(tops, {"q": "query"}, lambda q, items: np.array([grades[i] for i in items]), 2, 3)
    assert judged == 3  # a, c from one ranker, b, c from the other: 3 distinct pairs graded once
    assert scores["good"]["q"] == pytest.approx(1.0) and scores["bad"]["q"] < 0.5
    none, _ = judged_ndcg(tops, {"q": "query"}, lambda q, items: np.zeros(len(items), int), 2, 3)
    assert none == {"good": {}, "bad": {}}  # nothing relevant: undefined, left out


def test_agreement_per_group_and_the_floor():
    judge = np.array([0, 1, 2, 2, 1, 0])
    human = np.array([0, 1, 2, 1, 1, 2])
    report = agreement(judge, human, np.array(["en", "en", "en", "de", "de", "de"]))
    assert report["overall"]["exact"] == pytest.approx(4 / 6) and report["overall"]["within_one"] == pytest.approx(5 / 6)
    assert report["per_group"]["en"]["kendall_tau"] == pytest.approx(1.0)
    assert report["per_group"]["de"]["exact"] == pytest.approx(1 / 3)
    require_agreement(report, 0.6)
    with pytest.raises(DataContractError, match="below the floor 0.7"):
        require_agreement(report, 0.7)
    assert agreement(np.ones(3), np.array([0, 1, 2]))["overall"]["kendall_tau"] is None
