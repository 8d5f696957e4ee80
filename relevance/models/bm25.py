"""BM25 over the catalog (bm25s): the index behind candidate generation (relevance.labels.pool) and the student's BM25
feature (relevance.student.featurizer).

Both use :func:`relevance.models.text.tokenize_words`, so the score a student sees at training time is the score the
serving path computes. BM25: Robertson & Zaragoza (2009), "The Probabilistic Relevance Framework".
"""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pandas as pd

from relevance.models.text import assemble_item_texts, tokenize_words


def lexical_item_texts(items: pd.DataFrame, text) -> pd.Series:
    """Item text for BM25, term matching and the student's embeddings: the configured fields cut to their
    budgets in words, without field labels. One definition, so the student's training and serving agree."""
    return assemble_item_texts(items, text, tokenizer=None, with_labels=False)


class BM25Index:
    def __init__(self, item_ids: list[str] | np.ndarray, item_texts: list[str], k1: float = 1.5, b: float = 0.75):
        if len(item_ids) != len(item_texts):
            raise ValueError(f"expected one text per item, got {len(item_texts)} texts for {len(item_ids)} items")
        if len(item_ids) == 0:
            raise ValueError("cannot build a BM25 index over an empty catalog")
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.position = _positions(self.item_ids)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index([tokenize_words(t) for t in item_texts], show_progress=False)
        _check_sorted_postings(self.retriever.scores)

    def save(self, directory: str | Path) -> Path:
        """The index as bm25s writes it plus the item ids in index order: what serving loads for the BM25
        feature (the catalog's IDF and average length), without the catalog's text."""
        directory = Path(directory)
        self.retriever.save(str(directory), show_progress=False)
        (directory / "item_ids.json").write_text(json.dumps(self.item_ids.tolist()))
        return directory

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = False) -> "BM25Index":
        directory = Path(directory)
        if not (directory / "item_ids.json").exists():
            raise FileNotFoundError(f"{directory}: not a saved BM25 index (no item_ids.json)")
        index = cls.__new__(cls)
        index.item_ids = np.asarray(json.loads((directory / "item_ids.json").read_text()), dtype=object)
        index.position = _positions(index.item_ids)
        index.retriever = bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False)
        _check_sorted_postings(index.retriever.scores)
        return index

    @classmethod
    def for_items(cls, items: pd.DataFrame, text, k1: float = 1.5, b: float = 0.75) -> "BM25Index":
        """The index over the catalog's lexical text (see :func:`lexical_item_texts`)."""
        item_text = lexical_item_texts(items, text)
        return cls(item_text.index.to_numpy(), item_text.tolist(), k1, b)

    def _scores(self, query: str) -> np.ndarray:
        tokens = [t for t in tokenize_words(query) if t in self.retriever.vocab_dict]
        if not tokens:
            return np.zeros(len(self.item_ids), dtype=np.float32)
        return self.retriever.get_scores(tokens)

    def top_k(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ids and scores of the k best items with a positive score, best first."""
        scores = self._scores(query)
        k = min(k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[scores[best] > 0]
        return self.item_ids[best], scores[best]

    def score_items(self, query: str, item_ids: list[str]) -> np.ndarray:
        """BM25 of one query against the given items (0 for items not in the index): the serving path.

        Only the candidates are scored (a binary search in each query term's posting list), so a request costs
        the same whatever the catalog's size; scoring every item and picking the candidates costs O(catalog)."""
        lookup = self.position.get
        position = np.fromiter((lookup(item_id, -1) for item_id in item_ids), dtype=np.int64, count=len(item_ids))
        known = position >= 0
        scores = np.zeros(len(item_ids), dtype=np.float32)
        if not known.any():
            return scores
        rows = position[known].astype(self.retriever.scores["indices"].dtype)  # searchsorted copies a list of another dtype
        if getattr(self.retriever, "nonoccurrence_array", None) is not None:  # BM25L/BM25+: every item scores
            scores[known] = self._scores(query)[rows]
            return scores
        vocabulary, matrix = self.retriever.vocab_dict, self.retriever.scores
        data, indices, indptr = matrix["data"], matrix["indices"], matrix["indptr"]
        found = np.zeros(len(rows), dtype=np.float32)  # summed in term order, in float32, as bm25s sums
        for token in tokenize_words(query):  # repeated terms count again, as bm25s counts them
            column = vocabulary.get(token)
            if column is None:
                continue
            start, end = int(indptr[column]), int(indptr[column + 1])
            at = start + np.searchsorted(indices[start:end], rows)
            hit = at < end
            hit[hit] = indices[at[hit]] == rows[hit]
            found[hit] += data[at[hit]]
        scores[known] = found
        return scores

    def score_pairs(self, queries: list[str] | pd.Series, item_ids: list[str] | pd.Series) -> np.ndarray:
        """BM25 score of each (query, item) row; items missing from the index score 0."""
        frame = pd.DataFrame({"query": list(queries), "item_id": list(item_ids)})
        scores = np.zeros(len(frame), dtype=np.float32)
        for query, rows in frame.groupby("query", sort=False).indices.items():
            scores[rows] = self.score_items(query, frame["item_id"].to_numpy()[rows].tolist())
        return scores


def _positions(item_ids: np.ndarray) -> dict:
    """Item id → its row in the index (a dict: a request's 100 lookups cost microseconds, a pandas reindex
    a fifth of a millisecond)."""
    return {item_id: row for row, item_id in enumerate(item_ids.tolist())}


def _check_sorted_postings(matrix: dict) -> None:
    """score_items binary-searches each term's posting list (bm25s's CSC matrix: item positions per term), which
    holds only if they are sorted; bm25s builds them sorted, and this says so if a version ever does not."""
    indices, indptr = np.asarray(matrix["indices"]), np.asarray(matrix["indptr"])
    if len(indices) < 2:
        return
    rising = np.diff(indices) > 0
    rising[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < len(indices))] - 1] = True  # a new term starts
    if not rising.all():
        raise ValueError("bm25s index: posting lists are not sorted by item; score_items cannot search them")
