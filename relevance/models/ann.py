"""Nearest items to a query by the student's bi-encoder: an approximate-nearest-neighbour index (faiss) over the
catalog's item embeddings, the pool's second candidate channel after BM25 (relevance.labels.pool).

The embeddings are L2-normalised (relevance.student.encoder), so the inner product is the cosine. Exact search is
cheap at the Home Depot catalog's 55k items; at millions an exact index would hold every float of every vector
(10M × 384 × 4 bytes = 15 GB), so ``spec="auto"`` switches to HNSW over 8-bit scalar-quantised vectors (about a
quarter of that, plus the graph) above ``EXACT_UP_TO`` items. Any faiss index-factory string may be given instead.

The index is filled a chunk of items at a time (the caller's ``vectors_of`` embeds or looks them up), so building
it holds the index and one chunk, never the catalog's vectors twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

EXACT_UP_TO = 200_000
APPROXIMATE = "HNSW32,SQ8"
TRAIN_ROWS = 100_000  # vectors a quantiser is trained on (the first chunks of the catalog)


def index_spec(spec: str, items: int) -> str:
    """The faiss index-factory string for ``items`` items: ``spec`` itself unless it is "auto"."""
    if spec != "auto":
        return spec
    return "Flat" if items <= EXACT_UP_TO else APPROXIMATE


class NearestItems:
    """An inner-product index over item embeddings, searched by query embeddings."""

    def __init__(self, item_ids: Sequence[str], vectors_of: Callable[[list[str]], np.ndarray], dimension: int,
                 spec: str = "auto", chunk: int = 50_000, on_chunk: Callable[[int], None] | None = None):
        import faiss

        self.item_ids = np.asarray(list(item_ids), dtype=object)
        if not len(self.item_ids):
            raise ValueError("nearest items: the catalog is empty")
        self.spec = index_spec(spec, len(self.item_ids))
        try:
            self.index = faiss.index_factory(int(dimension), self.spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise ValueError(f"nearest items: {self.spec!r} is not a faiss index-factory string ({error})") from None
        pending: list[np.ndarray] = []  # chunks held back until the quantiser has enough vectors to train on
        for start in range(0, len(self.item_ids), chunk):
            vectors = np.ascontiguousarray(vectors_of(list(self.item_ids[start:start + chunk])), dtype=np.float32)
            if vectors.shape != (min(chunk, len(self.item_ids) - start), dimension):
                raise ValueError(f"nearest items: expected vectors of shape (n, {dimension}), got {vectors.shape}")
            if self.index.is_trained:
                self.index.add(vectors)
            else:
                pending.append(vectors)
                if sum(len(p) for p in pending) >= TRAIN_ROWS or start + chunk >= len(self.item_ids):
                    sample = np.concatenate(pending)
                    self.index.train(sample)
                    self.index.add(sample)
                    pending = []
            if on_chunk:
                on_chunk(len(vectors))
        if self.index.ntotal != len(self.item_ids):
            raise RuntimeError(f"nearest items: indexed {self.index.ntotal} of {len(self.item_ids)} items")

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, cosines), each of shape (queries, ≤ k): the k nearest items of each query, best first.
        A row has fewer than k when the index finds fewer (the catalog is smaller, or HNSW stops short)."""
        import faiss

        k = min(int(k), len(self.item_ids))
        queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
        if hasattr(self.index, "hnsw"):
            # HNSW's beam width: wide enough to return k good neighbours (faiss's default of 16 is too narrow
            # for k in the tens).
            faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", max(64, 2 * k))
        scores, positions = self.index.search(queries, k)
        found = positions >= 0
        ids = np.where(found, self.item_ids[np.clip(positions, 0, None)], None)
        return ids, np.where(found, scores, np.nan)
