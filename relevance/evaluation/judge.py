"""A cross-encoder as the judge of rankings nobody graded: the one implementation behind the canary analysis's
teacher judge and judge-based offline evaluation.

The judge grades the union of the rankers' top-k for each query (its rounded expected grade), and each ranking is
scored by nDCG@k against those grades: LLM-as-judge evaluation of search rankings (Pinterest, arXiv 2509.03764).
A judge is only worth its agreement with humans, so :func:`agreement` measures it on judged pairs first (exact
agreement, Kendall's τ and Spearman's ρ, per locale), and :func:`require_agreement` refuses a judge below a floor.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from relevance.data.schema import DataContractError


def judge_grades(judge, queries: list[str], items: list[str]) -> np.ndarray:
    """The judge's grade per (query text, item text): its rounded expected grade."""
    from relevance.models.metrics import expected_grade

    probs = judge.predict_proba(list(queries), list(items))
    return np.rint(expected_grade(probs)).astype(int)


def judged_ndcg(tops: dict[str, dict[str, list[str]]], query_text: dict[str, str],
                grade: Callable[[list[str], list[str]], np.ndarray], k: int,
                num_grades: int, depth: int | None = None) -> tuple[dict[str, dict[str, float]], int]:
    """Per ranker, nDCG@k of each query's ranking against the judge's grades of the union of all rankers' top
    ``depth`` items (default k).

    ``tops``: ranker → query_id → its ranked item ids; ``grade(query_ids, item_ids)``: the judge's grades. A
    ranker's items are at their rank, the other rankers' extra items after its own. A depth beyond k lets the ideal
    ranking draw on items a ranker left below the cut (one ranker alone is otherwise judged only on the order of
    its own top-k). Queries with nothing relevant among the union are left out (nDCG is undefined there).
    Returns (scores, pairs judged)."""
    depth = k if depth is None else depth
    if depth < k:
        raise ValueError(f"the judged depth ({depth}) must be at least k ({k})")
    rankers = list(tops)
    rows: list[tuple[str, str]] = []
    for query_id in query_text:
        union = dict.fromkeys(i for r in rankers for i in tops[r].get(query_id, [])[:depth])
        rows.extend((query_id, item) for item in union)
    if not rows:
        return {r: {} for r in rankers}, 0
    query_ids = np.array([q for q, _ in rows])
    grades = np.asarray(grade(list(query_ids), [i for _, i in rows]))
    out = {}
    for ranker in rankers:
        position = {(q, i): rank for q, items in tops[ranker].items() for rank, i in enumerate(items[:depth])}
        scores = np.array([-position.get(row, 10 ** 6) for row in rows], float)
        out[ranker] = per_query_ndcg(query_ids, grades, scores, k, num_grades)
    return out, len(rows)


def per_query_ndcg(query_ids, grades, scores, k: int, num_grades: int) -> dict[str, float]:
    """nDCG@k of each query (the project's nDCG: relevance.models.metrics.ranking_metrics), skipping queries with
    nothing relevant to find."""
    from relevance.models.metrics import ranking_metrics

    query_ids, grades, scores = np.asarray(query_ids), np.asarray(grades), np.asarray(scores, float)
    out = {}
    for query_id in np.unique(query_ids):
        rows = query_ids == query_id
        value = ranking_metrics(query_ids[rows], grades[rows], scores[rows], ks=[k],
                                num_grades=num_grades)[f"ndcg@{k}"]
        if value is not None:
            out[str(query_id)] = float(value)
    return out


def agreement(judge: np.ndarray, human: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """How far the judge's grades agree with humans': exact agreement, agreement within one grade, Kendall's τ_b
    and Spearman's ρ, overall and per group (e.g. locale)."""
    from scipy.stats import kendalltau, spearmanr

    judge, human = np.asarray(judge, dtype=float), np.asarray(human, dtype=float)
    if judge.shape != human.shape or judge.ndim != 1 or not len(judge):
        raise ValueError(f"expected paired non-empty grade vectors, got {judge.shape} and {human.shape}")

    def block(j: np.ndarray, h: np.ndarray) -> dict:
        constant = len(np.unique(j)) < 2 or len(np.unique(h)) < 2  # a rank correlation needs two values a side
        return {"pairs": int(len(j)), "exact": float((j == h).mean()), "within_one": float((np.abs(j - h) <= 1).mean()),
                "kendall_tau": None if constant else float(kendalltau(j, h).statistic),
                "spearman_rho": None if constant else float(spearmanr(j, h).statistic)}

    out = {"overall": block(judge, human)}
    if groups is not None:
        groups = np.asarray(groups)
        out["per_group"] = {str(g): block(judge[groups == g], human[groups == g]) for g in np.unique(groups)}
    return out


def require_agreement(report: dict, floor: float, metric: str = "exact") -> None:
    """Refuse a judge whose overall ``metric`` against humans is below ``floor``: a judged effect from it would
    measure the judge, not the rankers."""
    value = report["overall"][metric]
    if value is None or value < floor:
        raise DataContractError(f"the judge agrees with humans at {metric} = {value if value is None else f'{value:.3f}'}"
                                f" on {report['overall']['pairs']} judged pairs, below the floor {floor}: no judged "
                                "effect is reported (lower the floor knowingly, or use a stronger judge)")


def human_agreement(judge, pairs: pd.DataFrame, query_text: pd.Series, item_text: pd.Series,
                    locale: pd.Series | None = None) -> dict:
    """:func:`agreement` of ``judge`` with the human grades of ``pairs`` (query_id, item_id, grade), per locale
    when ``locale`` (query_id → locale) is given."""
    grades = judge_grades(judge, query_text.reindex(pairs["query_id"]).fillna("").tolist(),
                          item_text.reindex(pairs["item_id"]).fillna("").tolist())
    groups = locale.reindex(pairs["query_id"]).fillna("").to_numpy() if locale is not None else None
    return agreement(grades, pairs["grade"].to_numpy(), groups)
