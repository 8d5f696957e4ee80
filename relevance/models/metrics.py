"""Evaluation metrics for K-level graded relevance.

A model (teacher or student) outputs, for every (query, item) pair, a probability distribution over the K
grades 0..K-1. This module scores such predictions two ways:

* as a classifier of the grade (:func:`classification_metrics`): accuracy, macro-F1, RMSE of the expected
  grade, one AUROC per cumulative threshold "grade >= t", and the confusion matrix;
* as a ranker of each query's judged items (:func:`ranking_metrics`): nDCG@k and P@k, ranking by the
  expected grade unless another score is given (e.g. a BM25 baseline).

:func:`evaluate_predictions` runs both over a judgments frame, overall and per segment (locale).

Every function returns plain Python numbers (``float``, ``int``, ``None``, lists), so that reports can be
written with ``json.dumps`` unchanged. Bad input raises :class:`ValueError` saying what was expected and what
was got. This module depends on numpy, pandas and scikit-learn only.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, ndcg_score, roc_auc_score

from relevance.models.calibration import ece_classwise, ece_top_label

__all__ = [
    "PROB_SUM_TOLERANCE",
    "classification_metrics",
    "default_gains",
    "default_relevance_threshold",
    "evaluate_predictions",
    "expected_grade",
    "ranking_metrics",
    "raw_score_rmse",
]

#: How far a row of probabilities may sum from 1 (float32 storage and softmax rounding stay well inside it).
PROB_SUM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------


def _check_probs(probs: np.ndarray, num_grades: int | None = None, name: str = "probs") -> np.ndarray:
    """Return ``probs`` as a float64 (n, K) array after checking shape, finiteness, sign and row sums."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n_pairs, K), got {probs.ndim}-D shape {probs.shape}")
    if probs.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row, got an empty array of shape {probs.shape}")
    if num_grades is not None and probs.shape[1] != num_grades:
        raise ValueError(f"{name}: expected K={num_grades} columns (one per grade), got {probs.shape[1]}")
    if probs.shape[1] < 2:
        raise ValueError(f"{name}: expected K >= 2 columns, got {probs.shape[1]}")
    if not np.all(np.isfinite(probs)):
        bad = int((~np.isfinite(probs)).any(axis=1).sum())
        raise ValueError(f"{name}: expected finite probabilities, got {bad} row(s) with NaN or inf")
    if (probs < -PROB_SUM_TOLERANCE).any():
        raise ValueError(f"{name}: expected non-negative probabilities, got minimum {probs.min():.6g}")
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > PROB_SUM_TOLERANCE
    if off.any():
        raise ValueError(
            f"{name}: expected every row to sum to 1 (tolerance {PROB_SUM_TOLERANCE}), got {int(off.sum())} row(s) "
            f"that do not, e.g. sums {np.round(sums[off][:3], 6).tolist()} at rows {np.flatnonzero(off)[:3].tolist()}"
        )
    return probs


def _check_grades(grades: np.ndarray, num_grades: int | None, n: int | None = None, name: str = "grades") -> np.ndarray:
    """Return ``grades`` as an int64 vector after checking length, integrality and range 0..K-1."""
    grades = np.asarray(grades)
    if grades.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {grades.shape}")
    if grades.size == 0:
        raise ValueError(f"{name}: expected at least one grade, got an empty array")
    if n is not None and grades.shape[0] != n:
        raise ValueError(f"{name}: length mismatch; expected {n} (one per row of probs), got {grades.shape[0]}")
    try:
        as_float = grades.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected integer grades, got dtype {grades.dtype}") from None
    if not np.all(np.isfinite(as_float)) or not np.all(np.mod(as_float, 1) == 0):
        bad = grades[~np.isfinite(as_float) | (np.mod(np.nan_to_num(as_float), 1) != 0)][:3].tolist()
        raise ValueError(f"{name}: expected integer grades, got e.g. {bad}")
    grades = as_float.astype(np.int64)
    upper = f"{num_grades - 1}" if num_grades is not None else "K-1"
    out = (grades < 0) if num_grades is None else (grades < 0) | (grades >= num_grades)
    if out.any():
        raise ValueError(
            f"{name}: expected grades in 0..{upper}"
            + (f" (K={num_grades})" if num_grades is not None else "")
            + f", got {int(out.sum())} out of range, e.g. {sorted(set(grades[out].tolist()))[:5]}"
        )
    return grades


def _check_vector(values, n: int, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {values.shape}")
    if values.shape[0] != n:
        raise ValueError(f"{name}: length mismatch; expected {n}, got {values.shape[0]}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: expected finite values, got {int((~np.isfinite(values)).sum())} NaN or inf")
    return values


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks: expected at least one cutoff, got none")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks: expected positive integers, got {k!r}")
    return tuple(int(k) for k in ks)


def _check_gains(gains, num_grades: int) -> np.ndarray:
    gains = np.asarray(gains, dtype=np.float64)
    if gains.ndim != 1 or gains.shape[0] != num_grades:
        raise ValueError(f"gains: expected one gain per grade ({num_grades}), got shape {gains.shape}")
    if not np.all(np.isfinite(gains)) or (gains < 0).any():
        raise ValueError(f"gains: expected finite non-negative gains (nDCG needs them), got {gains.tolist()}")
    return gains


# --------------------------------------------------------------------------------------------------------------
# Point metrics
# --------------------------------------------------------------------------------------------------------------


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """Expected grade ``E[g] = sum_g g * p_g`` of each row of an (n, K) probability matrix."""
    probs = _check_probs(probs)
    return probs @ np.arange(probs.shape[1], dtype=np.float64)


def default_gains(num_grades: int) -> np.ndarray:
    """The usual exponential nDCG gains ``2^g - 1`` for g = 0..K-1 (Burges et al., 2005): grade 0 gains nothing."""
    if isinstance(num_grades, bool) or not isinstance(num_grades, (int, np.integer)) or num_grades < 2:
        raise ValueError(f"num_grades: expected an integer >= 2, got {num_grades!r}")
    return np.power(2.0, np.arange(num_grades, dtype=np.float64)) - 1.0


def default_relevance_threshold(num_grades: int) -> int:
    """Default grade from which an item counts as relevant for P@k: ``max(1, K - 2)``.

    K=2 -> 1 (the positive class); K=3 (Home Depot low/mid/high) -> 1; K=4 (ESCI: Irrelevant, Complement,
    Substitute, Exact) -> 2, i.e. Substitute or Exact; K=5 -> 3, the two top grades. That is, the top two grades
    are relevant once there are at least four, and everything but grade 0 below that: a precision that only
    counts the single top grade is too sparse on short judged lists, and one that counts every non-zero grade
    is too lenient on fine scales.
    """
    if isinstance(num_grades, bool) or not isinstance(num_grades, (int, np.integer)) or num_grades < 2:
        raise ValueError(f"num_grades: expected an integer >= 2, got {num_grades!r}")
    return max(1, int(num_grades) - 2)


def classification_metrics(grades: np.ndarray, probs: np.ndarray) -> dict:
    """Grade-classification quality of (n, K) probabilities against true grades 0..K-1.

    Returns a dict with

    * ``accuracy`` of the arg-max grade;
    * ``macro_f1`` over all K grades (``labels=range(K)``), so that a grade absent from both truth and
      prediction counts as F1 = 0 (``zero_division=0``) rather than silently dropping out of the mean;
    * ``rmse_grade``: root mean squared error of the expected grade against the true grade;
    * ``ece_top`` and ``ece_classwise``: top-label and K-class expected calibration error (15 equal-width bins;
      relevance.models.calibration);
    * ``auroc_ge{t}`` for t = 1..K-1: ROC AUC of the tail probability ``P(grade >= t) = sum_{g>=t} p_g``
      against the binary truth ``grade >= t``; ``None`` when the truth has only one class;
    * ``confusion_matrix``: K x K list of ints, rows = true grade, columns = arg-max predicted grade.
    """
    probs = _check_probs(probs)
    num_grades = probs.shape[1]
    grades = _check_grades(grades, num_grades, n=probs.shape[0])
    labels = list(range(num_grades))
    predicted = probs.argmax(axis=1)
    result: dict = {
        "accuracy": float(accuracy_score(grades, predicted)),
        "macro_f1": float(f1_score(grades, predicted, labels=labels, average="macro", zero_division=0)),
        "rmse_grade": float(np.sqrt(np.mean((expected_grade(probs) - grades) ** 2))),
        "ece_top": ece_top_label(probs, grades),
        "ece_classwise": ece_classwise(probs, grades),
    }
    # tail[:, t] = P(grade >= t); the cumulative sum from the right.
    tail = np.cumsum(probs[:, ::-1], axis=1)[:, ::-1]
    for t in range(1, num_grades):
        truth = grades >= t
        if truth.all() or not truth.any():
            result[f"auroc_ge{t}"] = None
        else:
            result[f"auroc_ge{t}"] = float(roc_auc_score(truth, tail[:, t]))
    matrix = confusion_matrix(grades, predicted, labels=labels)
    result["confusion_matrix"] = [[int(v) for v in row] for row in matrix]
    return result


def raw_score_rmse(probs: np.ndarray, raw_scores: np.ndarray, raw_min: float, raw_max: float) -> float:
    """RMSE on the original human scale, predicting ``raw_min + (raw_max - raw_min) * E[g] / (K - 1)``.

    Home Depot's relevance is the mean of several raters' 1..3 ratings, and its grades are equally spaced bins
    of that mean, so rating is (up to binning) an affine function of grade. Expectation commutes with an affine
    map, hence the expected rating under the model's grade distribution is exactly the affine image of its
    expected grade, ``1 + 2 * E[g] / (K - 1)`` on 1..3, and this RMSE is comparable with the published
    Home Depot leaderboard numbers. A non-linear map would be needed only if the grades were unequally spaced.
    """
    probs = _check_probs(probs)
    raw_scores = _check_vector(raw_scores, probs.shape[0], "raw_scores")
    raw_min, raw_max = float(raw_min), float(raw_max)
    if not (np.isfinite(raw_min) and np.isfinite(raw_max) and raw_max > raw_min):
        raise ValueError(f"raw scale: expected finite raw_min < raw_max, got raw_min={raw_min}, raw_max={raw_max}")
    predicted = raw_min + (raw_max - raw_min) * expected_grade(probs) / (probs.shape[1] - 1)
    return float(np.sqrt(np.mean((predicted - raw_scores) ** 2)))


# --------------------------------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------------------------------


def ranking_metrics(
    query_ids,
    grades: np.ndarray,
    scores: np.ndarray,
    ks: Sequence[int] = (5, 10, 20),
    gains=None,
    relevance_threshold: int | None = None,
    *,
    num_grades: int | None = None,
) -> dict:
    """nDCG@k and P@k of ranking each query's judged items by ``scores`` (higher = ranked first).

    nDCG (Järvelin & Kekäläinen, 2002, "Cumulated gain-based evaluation of IR techniques", ACM TOIS 20(4))
    is computed by :func:`sklearn.metrics.ndcg_score`, i.e. ``DCG@k = sum_{r=1..k} gain(grade_r) / log2(r + 1)``
    divided by the DCG@k of the ideal ordering, with ``gain = gains[grade]`` (default ``2^g - 1``; ESCI uses
    its official ``[0, 0.01, 0.1, 1]``). Tied scores are averaged over all orderings of the tie
    (McSherry & Najork, 2008), as sklearn does. Conventions:

    * ``ndcg@k`` is the mean over queries whose ideal DCG is > 0, i.e. that have at least one item of positive
      gain; a query with nothing to find cannot be ranked well or badly and would otherwise count as 0;
    * a query with a single judged item of positive gain scores 1.0 (its only ordering is the ideal one;
      sklearn refuses lists of one document, so these are not passed to it);
    * ``p@k`` counts an item relevant when ``grade >= relevance_threshold`` (default
      :func:`default_relevance_threshold`, ``max(1, K - 2)``) and divides by ``min(k, n_items)`` rather than k:
      judged lists are short (often fewer than 10 items), and dividing by k would cap a perfect ranker of a
      5-item query at 0.5 for P@10, mixing list length into the score. Ties are averaged like nDCG's (expected
      precision under a random order of the tie). The mean is over queries with at least one relevant item.

    Also returns ``num_queries`` (distinct queries in the input), ``num_queries_ndcg`` and ``num_queries_p``
    (how many entered each mean). A mean over no queries is ``None``.

    ``num_grades`` (K) sets the default gains and threshold; if omitted it is ``len(gains)`` when gains are
    given, else ``max(grades) + 1``. Pass it whenever K is known: a sample without the top grade would
    otherwise get a different default threshold.

    The grouping is vectorised (one sort by query then score); queries are batched by list length for sklearn,
    and lists without ties take sklearn's vectorised path, so ~10k queries take well under a second.
    """
    query_ids, grades, scores, ks, gains, relevance_threshold = _ranking_inputs(
        query_ids, grades, scores, ks, gains, relevance_threshold, num_grades)
    n = query_ids.shape[0]

    # Sort by query, then by descending score: each query becomes a contiguous run, best-scored first.
    codes, uniques = pd.factorize(query_ids, sort=False)
    if (codes < 0).any():
        raise ValueError(f"query_ids: expected no missing ids, got {int((codes < 0).sum())} null(s)")
    num_queries = len(uniques)
    order = np.lexsort((-scores, codes))
    q_s, s_s = codes[order], scores[order]
    gain_s = gains[grades[order]]
    rel_s = (grades[order] >= relevance_threshold).astype(np.float64)

    new_query = np.r_[True, q_s[1:] != q_s[:-1]]
    starts = np.flatnonzero(new_query)  # starts[q] = first row of query q (codes are 0..Q-1, all present)
    sizes = np.diff(np.r_[starts, n])
    new_tie = new_query | np.r_[True, s_s[1:] != s_s[:-1]]
    tie_starts = np.flatnonzero(new_tie)
    tie_sizes = np.diff(np.r_[tie_starts, n])
    tie_query = q_s[tie_starts]
    tie_pos = tie_starts - starts[tie_query]  # 0-based rank of the tie group's first item within its query
    tie_rel = np.add.reduceat(rel_s, tie_starts)
    has_ties = np.bincount(tie_query, weights=(tie_sizes > 1), minlength=num_queries) > 0

    ndcg, n_ndcg = _mean_ndcg(ks, q_s, s_s, gain_s, starts, sizes, has_ties, num_queries)
    precision, n_p = _mean_precision(ks, q_s, rel_s, sizes, tie_pos, tie_sizes, tie_query, tie_rel, num_queries)
    return {**ndcg, **precision, "num_queries": int(num_queries), "num_queries_ndcg": n_ndcg, "num_queries_p": n_p}


def _ranking_inputs(query_ids, grades, scores, ks, gains, relevance_threshold, num_grades: int | None) -> tuple:
    """ranking_metrics' arguments checked, with K's default gains and relevance threshold filled in."""
    query_ids = np.asarray(query_ids)
    if query_ids.ndim != 1:
        raise ValueError(f"query_ids: expected a 1-D array, got shape {query_ids.shape}")
    if query_ids.shape[0] == 0:
        raise ValueError("query_ids: expected at least one (query, item) pair, got an empty array")
    n = query_ids.shape[0]
    grades = _check_grades(grades, num_grades, n=n)
    scores = _check_vector(scores, n, "scores")
    ks = _check_ks(ks)
    if num_grades is None:
        num_grades = len(gains) if gains is not None else max(int(grades.max()) + 1, 2)
        grades = _check_grades(grades, num_grades, n=n)
    gains = default_gains(num_grades) if gains is None else _check_gains(gains, num_grades)
    if relevance_threshold is None:
        relevance_threshold = default_relevance_threshold(num_grades)
    return query_ids, grades, scores, ks, gains, relevance_threshold


def _mean_ndcg(ks, q_s, s_s, gain_s, starts, sizes, has_ties, num_queries: int) -> tuple[dict, int]:
    """nDCG@k per cutoff, averaged over the queries with some positive gain, and how many those are. The arrays are
    ranking_metrics' sorted ones (one run per query, best-scored first), as in :func:`_mean_precision`."""
    result: dict = {}
    # nDCG: gains are non-negative, so ideal DCG > 0 <=> some item has positive gain.
    eligible = np.bincount(q_s, weights=gain_s, minlength=num_queries) > 0
    n_ndcg = int(eligible.sum())
    for k in ks:
        total = float(np.sum(eligible & (sizes == 1)))  # single positive-gain item: 1.0 each
        for size in np.unique(sizes[eligible & (sizes >= 2)]):
            for tied in (False, True):
                queries = np.flatnonzero(eligible & (sizes == size) & (has_ties == tied))
                if queries.size == 0:
                    continue
                rows = starts[queries][:, None] + np.arange(size)
                mean = ndcg_score(gain_s[rows], s_s[rows], k=k, ignore_ties=not tied)
                total += mean * queries.size
        result[f"ndcg@{k}"] = total / n_ndcg if n_ndcg else None
    return result, n_ndcg


def _mean_precision(ks, q_s, rel_s, sizes, tie_pos, tie_sizes, tie_query, tie_rel,
                    num_queries: int) -> tuple[dict, int]:
    """P@k per cutoff, averaged over the queries with some relevant item, and how many those are (rel_s: 1.0 where
    the sorted item is relevant; tie_*: the tie groups within each query, by their first sorted row)."""
    result: dict = {}
    # P@k: each tie group straddling the cutoff contributes its relevant fraction times the slots it fills.
    has_relevant = np.bincount(q_s, weights=rel_s, minlength=num_queries) > 0
    n_p = int(has_relevant.sum())
    for k in ks:
        slots = np.clip(k - tie_pos, 0, tie_sizes)
        hits = np.bincount(tie_query, weights=slots * tie_rel / tie_sizes, minlength=num_queries)
        precision = hits / np.minimum(k, sizes)
        result[f"p@{k}"] = float(precision[has_relevant].mean()) if n_p else None
    return result, n_p


# --------------------------------------------------------------------------------------------------------------
# Whole evaluation
# --------------------------------------------------------------------------------------------------------------


def _metrics_block(
    query_ids: np.ndarray,
    grades: np.ndarray,
    probs: np.ndarray,
    scores: np.ndarray,
    raw: np.ndarray | None,
    num_grades: int,
    gains: np.ndarray,
    ks: tuple[int, ...],
    relevance_threshold: int,
    raw_scale: tuple[float, float] | None,
) -> dict:
    block = classification_metrics(grades, probs)
    block.update(
        ranking_metrics(
            query_ids, grades, scores, ks=ks, gains=gains, relevance_threshold=relevance_threshold,
            num_grades=num_grades,
        )
    )
    if raw_scale is not None and raw is not None:
        known = np.isfinite(raw)
        block["rmse_raw"] = (
            raw_score_rmse(probs[known], raw[known], raw_scale[0], raw_scale[1]) if known.any() else None
        )
    block["num_pairs"] = int(len(grades))
    return block


def evaluate_predictions(
    frame: pd.DataFrame,
    probs: np.ndarray,
    num_grades: int,
    *,
    gains=None,
    ks: Sequence[int] = (5, 10, 20),
    relevance_threshold: int | None = None,
    raw_scale: tuple[float, float] | None = None,
    segment_column: str = "locale",
    scores: np.ndarray | None = None,
) -> dict:
    """All metrics for predicted grade distributions over a judgments frame, overall and per segment.

    ``frame`` has one row per (query, item) pair, aligned with the rows of ``probs`` (n, K), with columns
    ``query_id`` and ``grade`` and optionally ``segment_column`` (default ``locale``) and ``raw_score``.
    Items are ranked by ``scores`` if given (e.g. a BM25 baseline), else by the expected grade.

    Returns ``{"overall": block, "per_segment": {segment: block}}`` where a block holds
    :func:`classification_metrics`, :func:`ranking_metrics`, ``rmse_raw`` (only when ``raw_scale`` is given and
    the frame has ``raw_score``; computed over rows whose raw score is known, ``None`` if none is) and
    ``num_pairs``. ``per_segment`` is present whenever the frame has the segment column, with every segment,
    even if there is only one; segment keys are strings.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in ("query_id", "grade") if c not in frame.columns]
    if missing:
        raise ValueError(f"frame: missing column(s) {missing}; expected query_id and grade, got {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError("frame: expected at least one (query, item) pair, got an empty frame")
    probs = _check_probs(probs, num_grades)
    if probs.shape[0] != len(frame):
        raise ValueError(
            f"probs: length mismatch; expected {len(frame)} rows (one per frame row), got {probs.shape[0]}"
        )
    grades = _check_grades(frame["grade"].to_numpy(), num_grades, n=len(frame), name="frame['grade']")
    gains = default_gains(num_grades) if gains is None else _check_gains(gains, num_grades)
    ks = _check_ks(ks)
    if relevance_threshold is None:
        relevance_threshold = default_relevance_threshold(num_grades)
    scores = expected_grade(probs) if scores is None else _check_vector(scores, len(frame), "scores")
    raw = None
    if raw_scale is not None:
        if len(raw_scale) != 2:
            raise ValueError(f"raw_scale: expected (raw_min, raw_max), got {raw_scale!r}")
        if "raw_score" in frame.columns:
            raw = pd.to_numeric(frame["raw_score"], errors="coerce").to_numpy(dtype=np.float64)
    query_ids = frame["query_id"].to_numpy()

    def block(mask: np.ndarray | None) -> dict:
        if mask is None:
            return _metrics_block(query_ids, grades, probs, scores, raw, num_grades, gains, ks,
                                  relevance_threshold, raw_scale)
        return _metrics_block(query_ids[mask], grades[mask], probs[mask], scores[mask],
                              None if raw is None else raw[mask], num_grades, gains, ks,
                              relevance_threshold, raw_scale)

    report: dict = {"overall": block(None)}
    if segment_column in frame.columns:
        segments = frame[segment_column].astype(str).to_numpy()
        report["per_segment"] = {str(s): block(segments == s) for s in sorted(set(segments.tolist()))}
    return report
