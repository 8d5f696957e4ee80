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
        self.position = pd.Series(np.arange(len(self.item_ids)), index=self.item_ids)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index([tokenize_words(t) for t in item_texts], show_progress=False)

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
        index.position = pd.Series(np.arange(len(index.item_ids)), index=index.item_ids)
        index.retriever = bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False)
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
        """BM25 of one query against the given items (0 for items not in the index): the serving path."""
        position = self.position.reindex(item_ids).to_numpy()
        known = ~pd.isna(position)
        scores = np.zeros(len(item_ids), dtype=np.float32)
        if known.any():
            scores[known] = self._scores(query)[position[known].astype(np.int64)]
        return scores

    def score_pairs(self, queries: list[str] | pd.Series, item_ids: list[str] | pd.Series) -> np.ndarray:
        """BM25 score of each (query, item) row; items missing from the index score 0."""
        frame = pd.DataFrame({"query": list(queries), "item_id": list(item_ids)})
        scores = np.zeros(len(frame), dtype=np.float32)
        for query, rows in frame.groupby("query", sort=False).indices.items():
            scores[rows] = self.score_items(query, frame["item_id"].to_numpy()[rows].tolist())
        return scores
