"""Active learning: which unlabelled (query, item) pairs to send to human graders next.

A strategy scores every candidate pair; the selection then takes the best-scored pairs under a per-query cap, so no
single query dominates a batch of work (a budget spent on one ambiguous query teaches the teacher one query).

    random        a uniform draw: the baseline every other strategy must beat
    entropy       the teacher's predictive entropy: where the teacher is unsure (Settles, 2009, "Active Learning
                  Literature Survey", uncertainty sampling)
    disagreement  the student's and the teacher's expected grades differ most: where distillation loses
                  information (query-by-committee with a committee of two)
    diverse       entropy traded against similarity (cosine, in embedding space) to the pairs already chosen:
                  uncertain and not redundant

Every strategy works on a frame of candidates with the teacher's probabilities p_0..p_{K-1} (the labels of the
pool), plus the student's probabilities (disagreement) or an embedding per pair (diverse).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from relevance.data.schema import DataContractError, prob_columns
from relevance.models.metrics import expected_grade

STRATEGIES = ("random", "entropy", "disagreement", "diverse")
Strategy = Literal["random", "entropy", "disagreement", "diverse"]


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


def scores(candidates: pd.DataFrame, strategy: Strategy, num_grades: int, seed: int = 0,
           student_probs: np.ndarray | None = None) -> np.ndarray:
    """How much grading each candidate is worth under ``strategy`` (higher first)."""
    teacher = candidates[prob_columns(num_grades)].to_numpy(np.float64)
    if strategy == "random":
        return np.random.default_rng(seed).random(len(candidates))
    if strategy in ("entropy", "diverse"):
        return entropy(teacher)
    if strategy == "disagreement":
        if student_probs is None or student_probs.shape != teacher.shape:
            raise ValueError(f"the disagreement strategy needs the student's probabilities for every candidate, "
                             f"shape {teacher.shape}; got {None if student_probs is None else student_probs.shape}")
        return np.abs(expected_grade(teacher) - expected_grade(student_probs))
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {list(STRATEGIES)}")


def select(candidates: pd.DataFrame, budget: int, strategy: Strategy, num_grades: int, per_query: int = 3,
           seed: int = 0, student_probs: np.ndarray | None = None, embeddings: np.ndarray | None = None,
           diversity: float = 0.5) -> pd.DataFrame:
    """The ``budget`` candidates to grade: best-scored first, at most ``per_query`` per query (ties broken at
    random by ``seed``). Returns the chosen rows with their ``score`` and ``strategy``, in the order chosen.

    ``diverse`` picks by maximal marginal relevance (Carbonell & Goldstein, 1998): each step takes the pair with
    the best (1 − ``diversity``) · entropy (scaled to [0, 1]) − ``diversity`` · (its highest cosine similarity to a
    pair already chosen), so a near-twin of a chosen pair waits behind a less uncertain but new one.

    Fewer than ``budget`` rows come back only when the per-query cap (or the pool) leaves no more."""
    if budget < 1:
        raise ValueError(f"the budget must be at least 1 pair, got {budget}")
    if per_query < 1:
        raise ValueError(f"per_query must be at least 1, got {per_query}")
    missing = [c for c in ["query_id", "item_id", *prob_columns(num_grades)] if c not in candidates.columns]
    if missing:
        raise DataContractError(f"candidates for selection: missing column(s) {missing}")
    if candidates.duplicated(["query_id", "item_id"]).any():
        raise DataContractError("candidates for selection: a (query_id, item_id) pair appears twice")
    if strategy == "diverse" and (embeddings is None or len(embeddings) != len(candidates)):
        raise ValueError("the diverse strategy needs one embedding per candidate")
    value = scores(candidates, strategy, num_grades, seed, student_probs)
    tie_break = np.random.default_rng([seed, 1]).random(len(candidates))
    query_codes, _ = pd.factorize(candidates["query_id"])
    taken = np.zeros(query_codes.max() + 1 if len(query_codes) else 0, dtype=np.int64)
    chosen: list[int] = []
    if strategy == "diverse":
        vectors = np.asarray(embeddings, dtype=np.float32)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        spread = value.max() - value.min()
        relevance = (value - value.min()) / spread if spread > 0 else np.zeros_like(value)
        nearest = np.zeros(len(candidates))  # highest similarity to a chosen pair (0 before any is chosen)
        open_rows = np.ones(len(candidates), dtype=bool)
        while len(chosen) < budget and open_rows.any():
            gain = np.where(open_rows, (1 - diversity) * relevance - diversity * nearest + 1e-9 * tie_break, -np.inf)
            row = int(np.argmax(gain))
            chosen.append(row)
            open_rows[row] = False
            taken[query_codes[row]] += 1
            if taken[query_codes[row]] >= per_query:
                open_rows &= query_codes != query_codes[row]
            nearest = np.maximum(nearest, vectors @ vectors[row])
    else:
        for row in np.lexsort((tie_break, -value)):
            if taken[query_codes[row]] >= per_query:
                continue
            taken[query_codes[row]] += 1
            chosen.append(int(row))
            if len(chosen) == budget:
                break
    out = candidates.iloc[chosen].copy()
    out["score"] = value[chosen]
    out["strategy"] = strategy
    return out.reset_index(drop=True)


def select_for_grading(config, dataset, labels_dir, pool_path, strategy: Strategy, budget: int, per_query: int = 3,
                       seed: int = 0, student_dir=None, embeddings_dir=None, log=print) -> pd.DataFrame:
    """:func:`select` over the run's labelled pool: the teacher's labels (relevance.labels.labelling.label_chunks, the
    whole pool), the student's predictions for ``disagreement`` and pair embeddings (query + item, normalised)
    for ``diverse``, both computed a chunk at a time."""
    from relevance.labels.labelling import read_labels

    labels = read_labels(labels_dir, dataset.num_grades, pool_path=pool_path)
    student_probs = embeddings = None
    if strategy in ("disagreement", "diverse"):
        from relevance.student.featurizer import build_featurizer, featurizer_settings

        featurizer = build_featurizer(dataset.items, featurizer_settings(config), embeddings_dir)
    if strategy == "disagreement":
        from relevance.student.model import Student

        if student_dir is None:
            raise ValueError("the disagreement strategy needs a trained student (train-student first)")
        student = Student.load(student_dir)
        student_probs = np.concatenate([
            student.predict_proba(featurizer.pair_features(labels.iloc[s:s + 50_000], dataset.query_text))
            for s in range(0, len(labels), 50_000)])
    if strategy == "diverse":
        # The greedy pass walks down the entropy order; it never needs the pairs far below the budget.
        keep = np.argsort(-entropy(labels[prob_columns(dataset.num_grades)].to_numpy()), kind="stable")
        labels = labels.iloc[np.sort(keep[:max(50 * budget, 10_000)])].reset_index(drop=True)
        q, i = featurizer.embeddings(dataset.query_text.reindex(labels["query_id"]).tolist(),
                                     labels["item_id"].tolist())
        embeddings = q + i
    chosen = select(labels, budget, strategy, dataset.num_grades, per_query, seed, student_probs, embeddings)
    if len(chosen) < budget:
        log(f"select: {len(chosen)} pair(s), fewer than the budget of {budget}: at most {per_query} per query "
            f"over {labels['query_id'].nunique()} queries" + (" and the diversity threshold" if strategy == "diverse"
                                                               else ""))
    return chosen
