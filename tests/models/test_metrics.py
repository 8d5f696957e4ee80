"""Tests for relevance.models.metrics: hand-computed cases, a numpy reference for nDCG, segmentation and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from relevance.models.metrics import (
    classification_metrics,
    default_gains,
    default_relevance_threshold,
    evaluate_predictions,
    expected_grade,
    ranking_metrics,
    raw_score_rmse,
)


def one_hot(grades, num_grades):
    probs = np.zeros((len(grades), num_grades))
    probs[np.arange(len(grades)), grades] = 1.0
    return probs


def numpy_ndcg(gains_in_score_order: np.ndarray, k: int) -> float:
    """Direct DCG@k / IDCG@k with gain / log2(rank + 1), ranks from 1; the list is given best-scored first."""
    discount = 1.0 / np.log2(np.arange(2, len(gains_in_score_order) + 2))
    dcg = float(np.sum(gains_in_score_order[:k] * discount[:k]))
    ideal = np.sort(gains_in_score_order)[::-1]
    idcg = float(np.sum(ideal[:k] * discount[:k]))
    return dcg / idcg


# ------------------------------------------------------------------------------------------------------------
# Point metrics
# ------------------------------------------------------------------------------------------------------------


def test_expected_grade_and_default_gains():
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(expected_grade(probs), [0.0, 1.5, 1.4])
    np.testing.assert_array_equal(default_gains(4), [0.0, 1.0, 3.0, 7.0])
    assert [default_relevance_threshold(k) for k in (2, 3, 4, 5)] == [1, 1, 2, 3]


def test_classification_perfect_with_absent_class_and_confusion():
    grades = np.array([0, 0, 1, 1])  # grade 2 of K=3 never occurs
    report = classification_metrics(grades, one_hot(grades, 3))
    assert report["accuracy"] == 1.0
    # per-class F1 = [1, 1, 0 (absent, zero_division=0)] -> macro 2/3
    assert report["macro_f1"] == pytest.approx(2 / 3)
    assert report["rmse_grade"] == 0.0
    assert report["auroc_ge1"] == 1.0
    assert report["auroc_ge2"] is None  # only one class in "grade >= 2"
    assert report["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]
    assert all(type(v) is int for row in report["confusion_matrix"] for v in row)


def test_classification_hand_computed_errors():
    grades = np.array([0, 2, 1, 2])
    probs = np.array(
        [
            [0.5, 0.5, 0.0],  # E=0.5, argmax 0 (first of tie) -> correct
            [0.0, 0.6, 0.4],  # E=1.4, argmax 1 -> wrong
            [0.1, 0.8, 0.1],  # E=1.0, argmax 1 -> correct
            [0.0, 0.0, 1.0],  # E=2.0, argmax 2 -> correct
        ]
    )
    report = classification_metrics(grades, probs)
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["rmse_grade"] == pytest.approx(math.sqrt((0.25 + 0.36 + 0.0 + 0.0) / 4))
    # predicted [0,1,1,2] vs true [0,2,1,2]: F1 = [1, 2/3, 2/3]
    assert report["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # P(grade>=2) = [0, .4, .1, 1] vs truth [0,1,0,1]: separable -> 1.0
    assert report["auroc_ge2"] == 1.0
    # P(grade>=1) = [.5, 1, .9, 1] vs truth [0,1,1,1]: every positive above the negative
    assert report["auroc_ge1"] == 1.0


def test_auroc_inverted_is_zero():
    grades = np.array([0, 0, 1, 1])
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.8, 0.2], [0.9, 0.1]])
    assert classification_metrics(grades, probs)["auroc_ge1"] == 0.0


def test_raw_score_rmse_linear_map():
    probs = one_hot([2], 5)  # grade 2 of 0..4 -> 1 + 2 * 2 / 4 = 2.0 on 1..3
    assert raw_score_rmse(probs, np.array([2.0]), 1.0, 3.0) == pytest.approx(0.0)
    assert raw_score_rmse(probs, np.array([2.5]), 1.0, 3.0) == pytest.approx(0.5)
    # a spread distribution maps through its expectation: E = 0.5*0 + 0.5*4 = 2 -> 2.0
    spread = np.array([[0.5, 0.0, 0.0, 0.0, 0.5]])
    assert raw_score_rmse(spread, np.array([2.0]), 1.0, 3.0) == pytest.approx(0.0)
    ends = one_hot([0, 4], 5)
    assert raw_score_rmse(ends, np.array([1.0, 3.0]), 1.0, 3.0) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------------------
# Ranking metrics
# ------------------------------------------------------------------------------------------------------------


def test_perfect_ranking_ndcg_is_one():
    q = np.array(["a"] * 4 + ["b"] * 3)
    grades = np.array([3, 2, 1, 0, 0, 1, 2])
    report = ranking_metrics(q, grades, scores=grades.astype(float), ks=(1, 2, 10), num_grades=4)
    for k in (1, 2, 10):
        assert report[f"ndcg@{k}"] == pytest.approx(1.0)
    assert report["num_queries"] == 2


def test_reversed_ranking_ndcg_by_hand():
    # K=3, gains [0, 1, 3]; ranked order of grades is 0, 1, 2 (worst first).
    grades = np.array([2, 1, 0])
    scores = np.array([0.1, 0.2, 0.3])
    report = ranking_metrics(np.zeros(3), grades, scores, ks=(1, 2, 3), num_grades=3)
    idcg3 = 3 / 1 + 1 / math.log2(3) + 0
    dcg3 = 0 / 1 + 1 / math.log2(3) + 3 / 2
    assert report["ndcg@3"] == pytest.approx(dcg3 / idcg3)  # = 0.58688...
    assert report["ndcg@3"] == pytest.approx(0.586883, abs=1e-6)
    assert report["ndcg@1"] == pytest.approx(0.0)
    assert report["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (3 + 1 / math.log2(3)))


def test_known_precision_at_k():
    # K=5, threshold max(1, K-2)=3. Grades in score order: 4, 0, 3, 1, 0 -> relevant 1,0,1,0,0.
    grades = np.array([4, 0, 3, 1, 0])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    report = ranking_metrics(np.zeros(5), grades, scores, ks=(1, 2, 3, 5, 10), num_grades=5)
    assert report["p@1"] == pytest.approx(1.0)
    assert report["p@2"] == pytest.approx(0.5)
    assert report["p@3"] == pytest.approx(2 / 3)
    assert report["p@5"] == pytest.approx(2 / 5)
    assert report["p@10"] == pytest.approx(2 / 5)  # divided by min(10, 5 items)
    # an explicit threshold of 1 makes grade 1 relevant too
    lenient = ranking_metrics(np.zeros(5), grades, scores, ks=(5,), num_grades=5, relevance_threshold=1)
    assert lenient["p@5"] == pytest.approx(3 / 5)


def test_ties_are_averaged():
    # Two items tied at the top, one relevant: expected P@1 is 1/2, and nDCG@1 is the tie's mean gain / ideal.
    grades = np.array([1, 0, 0])
    scores = np.array([1.0, 1.0, 0.0])
    report = ranking_metrics(np.zeros(3), grades, scores, ks=(1, 3), num_grades=2)
    assert report["p@1"] == pytest.approx(0.5)
    assert report["p@3"] == pytest.approx(1 / 3)
    assert report["ndcg@1"] == pytest.approx(0.5)


def test_single_item_and_zero_gain_queries():
    q = np.array(["single", "empty", "empty", "pair", "pair"])
    grades = np.array([2, 0, 0, 0, 2])
    scores = np.array([0.0, 1.0, 2.0, 1.0, 0.0])  # "pair" is ranked worst-first
    report = ranking_metrics(q, grades, scores, ks=(1,), num_grades=3)
    # "single" -> 1.0, "empty" excluded (ideal DCG 0), "pair" -> 0.0 at k=1
    assert report["num_queries"] == 3
    assert report["num_queries_ndcg"] == 2
    assert report["ndcg@1"] == pytest.approx(0.5)
    assert report["num_queries_p"] == 2
    assert report["p@1"] == pytest.approx(0.5)


def test_no_rankable_query_gives_none():
    report = ranking_metrics(np.array([1, 1]), np.array([0, 0]), np.array([0.2, 0.1]), ks=(5,), num_grades=3)
    assert report["ndcg@5"] is None and report["p@5"] is None


def test_ndcg_matches_numpy_reference_on_random_data():
    rng = np.random.default_rng(7)
    num_grades = 5
    sizes = rng.integers(1, 25, size=300)
    query_ids = np.repeat(np.arange(300), sizes)
    rng.shuffle(query_ids)  # rows of a query need not be contiguous
    grades = rng.integers(0, num_grades, size=len(query_ids))
    scores = rng.permutation(len(query_ids)).astype(float)  # distinct: no ties
    gains = default_gains(num_grades)
    for ks, custom in (((1, 3, 5, 10, 20), None), ((5, 10), np.array([0.0, 0.01, 0.1, 0.5, 1.0]))):
        used = gains if custom is None else custom
        report = ranking_metrics(query_ids, grades, scores, ks=ks, gains=custom, num_grades=num_grades)
        for k in ks:
            values = []
            for q in np.unique(query_ids):
                mask = query_ids == q
                ranked = used[grades[mask][np.argsort(-scores[mask])]]
                if ranked.sum() > 0:
                    values.append(numpy_ndcg(ranked, k))
            assert report[f"ndcg@{k}"] == pytest.approx(np.mean(values), rel=1e-9)
            assert report["num_queries_ndcg"] == len(values)


# ------------------------------------------------------------------------------------------------------------
# evaluate_predictions
# ------------------------------------------------------------------------------------------------------------


def make_frame():
    frame = pd.DataFrame(
        {
            "query_id": ["q1", "q1", "q1", "q2", "q2", "q3", "q3"],
            "item_id": list("abcdefg"),
            "grade": [2, 1, 0, 0, 2, 1, 2],
            "locale": ["us", "us", "us", "us", "us", "jp", "jp"],
            "raw_score": [3.0, 2.0, 1.0, 1.0, 3.0, 2.0, np.nan],
        }
    )
    probs = np.array(
        [
            [0.0, 0.1, 0.9],
            [0.1, 0.8, 0.1],
            [0.9, 0.1, 0.0],
            [0.2, 0.6, 0.2],  # q2 ranked wrong: E=1.0 for a grade 0
            [0.4, 0.5, 0.1],  # and E=0.7 for a grade 2
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    return frame, probs


def test_evaluate_overall_and_segments():
    frame, probs = make_frame()
    report = evaluate_predictions(frame, probs, 3, ks=(1, 5), raw_scale=(1.0, 3.0))
    overall = report["overall"]
    assert overall["num_pairs"] == 7
    assert overall["num_queries"] == 3
    # q1, q3 ranked perfectly; q2 reversed: nDCG@1 = (1 + 0 + 1) / 3
    assert overall["ndcg@1"] == pytest.approx(2 / 3)
    assert set(report["per_segment"]) == {"us", "jp"}
    us, jp = report["per_segment"]["us"], report["per_segment"]["jp"]
    assert us["num_pairs"] == 5 and jp["num_pairs"] == 2
    assert us["ndcg@1"] == pytest.approx(0.5)
    assert jp["ndcg@1"] == pytest.approx(1.0)
    # segment blocks equal a direct evaluation of the segment's rows
    mask = (frame["locale"] == "us").to_numpy()
    direct = evaluate_predictions(frame[mask], probs[mask], 3, ks=(1, 5), raw_scale=(1.0, 3.0))["overall"]
    assert direct == us
    # rmse_raw skips the unknown raw score of row g; jp has one known row: E=1 -> 2.0 vs 2.0
    assert jp["rmse_raw"] == pytest.approx(0.0)
    expected_raw = 1 + 2 * expected_grade(probs[:6]) / 2
    assert overall["rmse_raw"] == pytest.approx(
        math.sqrt(np.mean((expected_raw - frame["raw_score"].to_numpy()[:6]) ** 2))
    )
    json.dumps(report)  # plain Python types throughout


def test_evaluate_single_segment_and_no_segment_column():
    frame, probs = make_frame()
    one = frame.assign(locale="en_US")
    report = evaluate_predictions(one, probs, 3)
    assert list(report["per_segment"]) == ["en_US"]
    assert report["per_segment"]["en_US"] == report["overall"]
    assert "rmse_raw" not in report["overall"]  # no raw_scale given
    bare = evaluate_predictions(frame.drop(columns=["locale", "raw_score"]), probs, 3, raw_scale=(1.0, 3.0))
    assert "per_segment" not in bare
    assert "rmse_raw" not in bare["overall"]


def test_evaluate_scores_override_and_gains():
    frame, probs = make_frame()
    perfect = frame["grade"].to_numpy().astype(float)
    report = evaluate_predictions(frame, probs, 3, ks=(1, 10), scores=perfect, gains=[0.0, 0.1, 1.0])
    assert report["overall"]["ndcg@1"] == pytest.approx(1.0)
    assert report["overall"]["ndcg@10"] == pytest.approx(1.0)
    # classification metrics still come from probs
    assert report["overall"]["accuracy"] == pytest.approx(5 / 7)


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------


def test_errors_name_expected_and_got():
    probs = one_hot([0, 1, 2], 3)
    with pytest.raises(ValueError, match="expected 3 .*got 2"):
        classification_metrics(np.array([0, 1]), probs)
    with pytest.raises(ValueError, match="do not"):
        classification_metrics(np.array([0, 1]), np.array([[0.5, 0.6], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"0\.\.2 .*got 1 out of range"):
        classification_metrics(np.array([0, 1, 3]), probs)
    with pytest.raises(ValueError, match="2-D"):
        expected_grade(np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="length mismatch; expected 3, got 2"):
        raw_score_rmse(probs, np.array([1.0, 2.0]), 1.0, 3.0)
    with pytest.raises(ValueError, match="raw_min < raw_max"):
        raw_score_rmse(probs, np.array([1.0, 2.0, 3.0]), 3.0, 1.0)


def test_ranking_errors():
    with pytest.raises(ValueError, match="empty"):
        ranking_metrics(np.array([]), np.array([], dtype=int), np.array([]))
    with pytest.raises(ValueError, match="scores: length mismatch; expected 2, got 3"):
        ranking_metrics(np.array([1, 1]), np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="finite"):
        ranking_metrics(np.array([1, 1]), np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="one gain per grade"):
        ranking_metrics(np.array([1, 1]), np.array([0, 1]), np.array([0.1, 0.2]), gains=[0, 1], num_grades=3)
    with pytest.raises(ValueError, match="positive integers"):
        ranking_metrics(np.array([1, 1]), np.array([0, 1]), np.array([0.1, 0.2]), ks=(0,))


def test_evaluate_errors():
    frame, probs = make_frame()
    with pytest.raises(ValueError, match="expected K=4 columns .*got 3"):
        evaluate_predictions(frame, probs, 4)
    with pytest.raises(ValueError, match="expected 7 rows .*got 6"):
        evaluate_predictions(frame, probs[:6], 3)
    with pytest.raises(ValueError, match="empty frame"):
        evaluate_predictions(frame.iloc[:0], probs[:0], 3)
    with pytest.raises(ValueError, match="missing column"):
        evaluate_predictions(frame.drop(columns=["grade"]), probs, 3)
    with pytest.raises(ValueError, match="sum to 1"):
        evaluate_predictions(frame, probs * 0.5, 3)
    with pytest.raises(ValueError, match="scores: length mismatch"):
        evaluate_predictions(frame, probs, 3, scores=np.zeros(3))
