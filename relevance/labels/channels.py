"""The pool's candidate channels, one query chunk at a time (relevance.labels.pool runs them and keeps what the
guards allow): BM25's top-K, the items nearest each query by the student's bi-encoder (relevance.models.ann), and
the items a trained student ranks first among those lists, deeper.

Each yields frames of (query_id, item_id) pairs per chunk of queries, in memory of one chunk; a query text shared
by several query ids is retrieved (and scored) once."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from relevance.models.ann import NearestItems
from relevance.models.bm25 import BM25Index

# Queries per chunk of the embedding and student channels: the student channel reads the n-th chunk's nearest lists
# that the embedding channel saved, so both must cut the queries alike.
CHUNK_QUERIES = 10_000


def iter_bm25_candidates(index: BM25Index, queries: pd.DataFrame, top_k: int, exclude: pd.DataFrame | None = None,
                         on_query=None, chunk_queries: int = 10_000) -> Iterator[pd.DataFrame]:
    """The top-K items for each query (query_id, query columns), minus pairs in ``exclude`` (judged pairs), as
    one frame per ``chunk_queries`` queries. Queries sharing a text are retrieved once (search logs repeat their
    head queries)."""
    judged = pd.MultiIndex.from_frame(exclude[["query_id", "item_id"]]) if exclude is not None else None
    for start in range(0, len(queries), chunk_queries):
        chunk = queries.iloc[start:start + chunk_queries]
        retrieved: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        query_ids, item_ids, scores = [], [], []
        for query_id, query in zip(chunk["query_id"], chunk["query"]):
            if query not in retrieved:
                retrieved[query] = index.top_k(query, top_k)
            ids, best = retrieved[query]
            query_ids.append(np.full(len(ids), query_id, dtype=object))
            item_ids.append(ids)
            scores.append(best.astype(float))
            if on_query:
                on_query()
        candidates = pd.DataFrame({"query_id": np.concatenate(query_ids) if query_ids else [],
                                   "item_id": np.concatenate(item_ids) if item_ids else [],
                                   "bm25": np.concatenate(scores) if scores else []})
        if judged is not None and len(candidates):
            candidates = candidates[~pd.MultiIndex.from_frame(candidates[["query_id", "item_id"]]).isin(judged)]
        yield candidates.reset_index(drop=True)


def bm25_candidates(index: BM25Index, queries: pd.DataFrame, top_k: int, exclude: pd.DataFrame | None = None,
                    on_query=None) -> pd.DataFrame:
    """:func:`iter_bm25_candidates` as one frame (for query sets that fit in memory)."""
    parts = list(iter_bm25_candidates(index, queries, top_k, exclude, on_query))
    return (pd.concat(parts, ignore_index=True) if parts
            else pd.DataFrame({"query_id": [], "item_id": [], "bm25": []}))


def iter_embedding_candidates(nearest: NearestItems, query_vectors, queries: pd.DataFrame, top_k: int,
                              on_query=None, chunk_queries: int = CHUNK_QUERIES) -> Iterator[pd.DataFrame]:
    """The ``top_k`` items nearest each query (query_id, query columns) by ``nearest``, one frame per
    ``chunk_queries`` queries; ``query_vectors(texts)`` embeds a chunk's distinct texts (relevance.student.featurizer
    PairFeaturizer.query_vectors). Judged and held-out pairs are left to the pool's filter."""
    for start in range(0, len(queries), chunk_queries):
        chunk = queries.iloc[start:start + chunk_queries]
        texts = list(dict.fromkeys(chunk["query"].astype(str)))
        ids, cosines = nearest.search(query_vectors(texts), top_k)
        row_of = {text: row for row, text in enumerate(texts)}
        rows = chunk["query"].astype(str).map(row_of).to_numpy()
        found = pd.notna(ids[rows])  # a search may return fewer than top_k
        candidates = pd.DataFrame({"query_id": np.repeat(chunk["query_id"].to_numpy(dtype=object), ids.shape[1]),
                                   "item_id": ids[rows].ravel(), "cosine": cosines[rows].ravel()})
        if on_query:
            for _ in range(len(chunk)):
                on_query()
        yield candidates[found.ravel()].reset_index(drop=True)


def iter_student_candidates(student, featurizer, queries: pd.DataFrame, depth: int, top_k: int,
                            nearest_lists=None, exclude: pd.DataFrame | None = None, on_query=None,
                            chunk_queries: int = CHUNK_QUERIES, chunk_pairs: int = 20_000) -> Iterator[pd.DataFrame]:
    """The ``top_k`` items ``student`` (relevance.student.model.Student) ranks first for each query (query_id,
    query columns) among its BM25 top-``depth`` (``featurizer.bm25``: the student's own featurizer, rebuilt from
    its manifest) and, with ``nearest_lists(n)``, the items the embedding channel found nearest the queries of
    the n-th chunk of ``chunk_queries`` (a frame of query_id, item_id). Ranked by expected grade, ties in
    retrieval order. Pairs in ``exclude`` (the judged ones) are skipped before the top-k is taken: a student
    ranks what it was trained on first, and a train query's channel would otherwise come out empty after the
    pool's filter; held-out queries are left to that filter.

    A chunk's distinct query texts are embedded together (one embedding-cache part per chunk, not per scoring
    batch); its pairs are then scored ``chunk_pairs`` at a time (their feature rows are the memory)."""
    from relevance.models.metrics import expected_grade

    judged = pd.MultiIndex.from_frame(exclude[["query_id", "item_id"]]) if exclude is not None else None
    judged_per_query = exclude["query_id"].value_counts() if exclude is not None else pd.Series(dtype=int)
    for number, start in enumerate(range(0, len(queries), chunk_queries)):
        chunk = queries.iloc[start:start + chunk_queries].astype({"query": str})
        texts = list(dict.fromkeys(chunk["query"]))
        # A text's best top_k + (its queries' most judged pairs) hold each of its queries' top_k unjudged ones.
        spare = int(judged_per_query.reindex(chunk["query_id"]).fillna(0).max()) if len(chunk) else 0
        featurizer.query_vectors(texts)  # cached now: the scoring batches below look them up
        lists = {text: list(featurizer.bm25.top_k(text, depth)[0]) for text in texts}
        nearest = nearest_lists(number) if nearest_lists is not None else None
        if nearest is not None and len(nearest):
            text_of = dict(zip(chunk["query_id"], chunk["query"]))
            for query_id, items in nearest.groupby("query_id", sort=False)["item_id"]:
                lists[text_of[query_id]] += items.tolist()  # a text shared by several ids: its lists alike
        best = []
        for group in _batches({text: list(dict.fromkeys(lists[text])) for text in texts}, chunk_pairs):
            batch_texts = [text for text, items in group.items() for _ in items]
            batch_items = [item for items in group.values() for item in items]
            scores = expected_grade(student.predict_proba(featurizer.transform(batch_texts, batch_items)))
            ranked = pd.DataFrame({"query": batch_texts, "item_id": batch_items, "score": scores})
            # A query's pairs are all in one batch: its best are final here.
            best.append(ranked.sort_values("score", ascending=False, kind="stable")
                        .groupby("query", sort=False).head(top_k + spare)[["query", "item_id"]])
        top = pd.concat(best, ignore_index=True) if best else pd.DataFrame({"query": [], "item_id": []})
        found = chunk[["query_id", "query"]].merge(top, on="query")  # keeps each text's rank order
        if spare:
            found = found[~pd.MultiIndex.from_frame(found[["query_id", "item_id"]]).isin(judged)]
        found = found.groupby("query_id", sort=False).head(top_k)
        if on_query:
            for _ in range(len(chunk)):
                on_query()
        yield found[["query_id", "item_id"]].reset_index(drop=True)


def _batches(lists: dict[str, list], pairs: int) -> Iterator[dict[str, list]]:
    """``lists`` (query text → its items) in groups of whole queries holding about ``pairs`` pairs each (a query
    with more has a group of its own)."""
    group: dict[str, list] = {}
    size = 0
    for text, items in lists.items():
        if group and size + len(items) > pairs:
            yield group
            group, size = {}, 0
        if items:
            group[text] = items
            size += len(items)
    if group:
        yield group


def load_channel_student(directory: str | Path):
    """The student channel's student (``candidates.student_model``), refused with a clear error when the
    directory is missing, holds another kind of model (a teacher, a GBDT, a serving bundle), or a student of
    other features than this code computes."""
    from relevance.common.files import read_manifest
    from relevance.student.featurizer import FEATURE_VERSION, feature_names
    from relevance.student.model import Student

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"candidates.student_model: {directory} is not a directory (a trained student's, "
                                "e.g. the champion's)")
    manifest = read_manifest(directory, expected_kind="student")
    if manifest.get("feature_version") != FEATURE_VERSION:
        raise ValueError(f"candidates.student_model: {directory} was trained on feature version "
                         f"{manifest.get('feature_version')}, this code computes version {FEATURE_VERSION}")
    student = Student.load(directory)
    expected = len(feature_names(int(manifest["embedding_dim"])))
    if student.model.feature_mean.shape[0] != expected:
        raise ValueError(f"candidates.student_model: {directory} takes {student.model.feature_mean.shape[0]} "
                         f"features, its featurizer makes {expected}")
    return student
