"""Human grading from served traffic: which (query, item) pairs users were shown deserve a grade.

`relevance select --from-traffic` reads captured traffic (relevance.traffic), takes each ranking's top-k pairs
(what users saw), and keeps one row per distinct pair with the mean served score. Refused before any scoring:
pairs of valid/test queries (by normalised text) and of the judge holdout (its hash slice), items outside the
catalog (nothing to show a grader), pairs already judged. A query seen in traffic but not in the dataset gets a
stable id from its normalised text (``traffic-…``) and is added to the dataset's queries with the selection, so
that `relevance import-labels` takes the grades back like any other and the next pool builds from them.

Strategies are relevance.labels.active's: ``entropy`` scores the pairs with the teacher; ``disagreement`` needs
no student run, the served expected grade is the student's; ``random`` needs neither. The teacher scores at most
``max_scored`` pairs, drawn per query first, so one head query never fills the batch or the teacher's time.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import pandas as pd

from relevance.data.schema import Dataset, prob_columns
from relevance.labels.active import select

TRAFFIC_QUERY_PREFIX = "traffic-"
TRAFFIC_STRATEGIES = ("random", "entropy", "disagreement")


def traffic_query_id(text: str) -> str:
    """A query id for a query text first seen in traffic: stable, and equal for texts that normalise alike."""
    from relevance.data.splits import normalize_query

    return TRAFFIC_QUERY_PREFIX + hashlib.sha256(normalize_query(text).encode("utf-8")).hexdigest()[:16]


def traffic_pairs(records: pd.DataFrame, dataset: Dataset, top_k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, new queries): the records' top_k (query_id, item_id) pairs with their mean served score
    (``student_grade``) and how often they were served, after the refusals in the module docstring; and the
    queries table rows for query texts the dataset does not have."""
    from relevance.data.splits import JUDGE_HOLDOUT_SALT, in_slice, normalize_query

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    columns = ["query_id", "item_id", "student_grade", "served"]
    if records.empty:
        return pd.DataFrame(columns=columns), pd.DataFrame(columns=["query_id", "query", "locale"])
    counts = records["item_ids"].map(lambda ids: min(len(ids), top_k))
    shown = pd.DataFrame({"query": records["query"].repeat(counts).to_numpy(),
                          "locale": records["locale"].repeat(counts).to_numpy(),
                          "item_id": [item for ids in records["item_ids"] for item in list(ids)[:top_k]],
                          "student_grade": [score for scores in records["scores"] for score in list(scores)[:top_k]]})
    shown["text"] = shown["query"].map(normalize_query)
    texts = dataset.queries.assign(text=dataset.queries["query"].map(normalize_query))
    held = dataset.judgments.loc[dataset.judgments["split"].isin(["valid", "test"]), "query_id"]
    held_texts = set(texts.loc[texts["query_id"].isin(held), "text"])
    known_id = texts.drop_duplicates("text").set_index("text")["query_id"]
    fraction = dataset.info.judge_holdout_fraction or 0.0
    keep = (~shown["text"].isin(held_texts) & shown["item_id"].isin(dataset.items["item_id"])
            & ~in_slice(shown["text"], fraction, JUDGE_HOLDOUT_SALT))
    shown = shown[keep.to_numpy()]
    shown["query_id"] = shown["text"].map(known_id)
    fresh = shown["query_id"].isna()
    shown.loc[fresh, "query_id"] = shown.loc[fresh, "query"].map(traffic_query_id)
    pairs = (shown.groupby(["query_id", "item_id"], sort=True)
             .agg(student_grade=("student_grade", "mean"), served=("student_grade", "size")).reset_index())
    judged = pd.MultiIndex.from_frame(dataset.judgments[["query_id", "item_id"]])
    pairs = pairs[~pd.MultiIndex.from_frame(pairs[["query_id", "item_id"]]).isin(judged)].reset_index(drop=True)
    new_queries = (shown.loc[fresh, ["query_id", "query", "locale"]].drop_duplicates("query_id")
                   .loc[lambda frame: frame["query_id"].isin(pairs["query_id"])].reset_index(drop=True))
    return pairs[columns], new_queries


def select_from_traffic(records: pd.DataFrame, dataset: Dataset, strategy: str, budget: int, per_query: int,
                        seed: int, top_k: int, teacher: Callable[[list[str], list[str]], np.ndarray] | None,
                        item_text: pd.Series, max_scored: int = 10_000,
                        log=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(chosen pairs, new queries): :func:`relevance.labels.active.select` over :func:`traffic_pairs`.
    ``teacher(queries, item_texts) → probs [n, K]`` scores the pairs for entropy and disagreement."""
    if strategy not in TRAFFIC_STRATEGIES:
        raise ValueError(f"--from-traffic: strategy {strategy!r} is not available; expected one of "
                         f"{list(TRAFFIC_STRATEGIES)} (diverse needs the pool's pair embeddings)")
    pairs, new_queries = traffic_pairs(records, dataset, top_k)
    if pairs.empty:
        raise ValueError(f"no traffic pair is eligible for grading among {len(records)} record(s): every one is of "
                         "a valid/test or judge-holdout query, an item outside the catalog, or already judged")
    # At most 10 × per_query pairs of a query, and max_scored in all, drawn at random before the teacher runs.
    rng = np.random.default_rng([seed, 2])
    pairs = pairs.iloc[rng.permutation(len(pairs))]
    pairs = pairs[pairs.groupby("query_id").cumcount() < 10 * per_query].head(max_scored).reset_index(drop=True)
    columns = prob_columns(dataset.num_grades)
    if strategy == "random":
        probs = np.full((len(pairs), dataset.num_grades), np.nan)
    else:
        if teacher is None:
            raise ValueError(f"the {strategy} strategy needs the teacher (train-teacher first), or use random")
        query_text = pd.concat([dataset.query_text, new_queries.set_index("query_id")["query"]])
        log(f"select: the teacher scores {len(pairs)} traffic pair(s) over {pairs['query_id'].nunique()} queries")
        probs = teacher(query_text.reindex(pairs["query_id"]).tolist(),
                        item_text.reindex(pairs["item_id"]).fillna("").tolist())
    pairs[columns] = probs
    student = None
    if strategy == "disagreement":  # the served expected grade, as a one-hot-free stand-in for the student's probs
        student = _probs_with_grade(pairs["student_grade"].to_numpy(), dataset.num_grades)
    chosen = select(pairs, budget, strategy, dataset.num_grades, per_query, seed, student_probs=student)
    return chosen, new_queries[new_queries["query_id"].isin(chosen["query_id"])].reset_index(drop=True)


def _probs_with_grade(grades: np.ndarray, num_grades: int) -> np.ndarray:
    """Probabilities over the two grades around each expected grade (linear interpolation): their expected
    grade is the given one, which is all the disagreement strategy reads of the student."""
    grades = np.clip(np.asarray(grades, dtype=np.float64), 0, num_grades - 1)
    low = np.floor(grades).astype(int)
    high = np.minimum(low + 1, num_grades - 1)
    weight = grades - low
    probs = np.zeros((len(grades), num_grades))
    probs[np.arange(len(grades)), low] += 1 - weight
    probs[np.arange(len(grades)), high] += weight
    return probs
