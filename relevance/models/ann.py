"""Nearest items to a query by the student's bi-encoder: an approximate-nearest-neighbour index (faiss) over the
catalog's item embeddings, the pool's second candidate channel after BM25 (relevance.labels.pool).

The embeddings are L2-normalised (relevance.student.encoder), so the inner product is the cosine. Exact search is
cheap at the Home Depot catalog's 55k items; at millions an exact index would hold every float of every vector
(10M × 384 × 4 bytes = 15 GB), so ``spec="auto"`` switches to HNSW over 8-bit scalar-quantised vectors above
``EXACT_UP_TO`` items: at 10M × 384, 3.8 GB of codes plus about 2.7 GB of graph (HNSW32). Beyond what the pool's
pod holds (relevance.config.steps: 8 Gi), give an IVF-PQ index-factory string instead (e.g. "IVF65536,PQ48":
48 bytes a vector, 0.5 GB at 10M), or any other faiss index-factory string.

The index is filled a chunk of items at a time (the caller's ``vectors_of`` embeds or looks them up), so building
it holds the index and one chunk, never the catalog's vectors twice. An index that learns (scalar quantiser, IVF,
PQ) trains first on a random sample of the catalog, not its first rows (a catalog sorted by department would skew
the quantiser). Exact indexes give the same pool on every run; HNSW's parallel inserts do not, bit for bit, so a
pool rebuilt with one gets a new fingerprint (its label shards are redone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

EXACT_UP_TO = 200_000
APPROXIMATE = "HNSW32,SQ8"
TRAIN_ROWS = 100_000  # vectors an index that learns is trained on (a random sample of the catalog)
# Search-time knobs, set on whichever index (or sub-index) has them: HNSW's beam and IVF's probed lists. faiss's
# defaults (efSearch 16, nprobe 1) are for k of a few and lose neighbours at the k of a pool channel (tens).
SEARCH_PARAMETERS = {"efSearch": lambda k: max(64, 2 * k), "nprobe": lambda k: 32}


def index_spec(spec: str, items: int) -> str:
    """The faiss index-factory string for ``items`` items: ``spec`` itself unless it is "auto"."""
    if spec != "auto":
        return spec
    return "Flat" if items <= EXACT_UP_TO else APPROXIMATE


def make_index(dimension: int, spec: str):
    """An empty inner-product faiss index of ``spec`` (an index-factory string); a clear error for a bad one."""
    import faiss

    try:
        return faiss.index_factory(int(dimension), spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"nearest items: {spec!r} is not a faiss index-factory string for {dimension}-dimensional "
                         f"vectors ({first})") from None


class NearestItems:
    """An inner-product index over item embeddings, searched by query embeddings."""

    def __init__(self, item_ids: Sequence[str], vectors_of: Callable[[list[str]], np.ndarray], dimension: int,
                 spec: str = "auto", chunk: int = 50_000, on_chunk: Callable[[int], None] | None = None,
                 seed: int = 0):
        import faiss
        import torch

        # faiss's OpenMP pool sized like torch's (relevance.common.runtime.set_threads: the cores this process
        # was given), not by the machine's core count: the two share the pod's CPUs.
        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
        self.item_ids = np.asarray(list(item_ids), dtype=object)
        if not len(self.item_ids):
            raise ValueError("nearest items: the catalog is empty")
        self.spec = index_spec(spec, len(self.item_ids))
        self.index = make_index(int(dimension), self.spec)
        if not self.index.is_trained:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(len(self.item_ids), min(TRAIN_ROWS, len(self.item_ids)), replace=False))
            self.index.train(self._vectors(vectors_of, list(self.item_ids[sample]), dimension))
        for start in range(0, len(self.item_ids), chunk):
            vectors = self._vectors(vectors_of, list(self.item_ids[start:start + chunk]), dimension)
            self.index.add(vectors)
            if on_chunk:
                on_chunk(len(vectors))
        if self.index.ntotal != len(self.item_ids):
            raise RuntimeError(f"nearest items: indexed {self.index.ntotal} of {len(self.item_ids)} items")

    @staticmethod
    def _vectors(vectors_of, ids: list[str], dimension: int) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors_of(ids), dtype=np.float32)
        if vectors.shape != (len(ids), dimension):
            raise ValueError(f"nearest items: expected vectors of shape (n, {dimension}), got {vectors.shape}")
        return vectors

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, cosines), each of shape (queries, ≤ k): the k nearest items of each query, best first.
        A row has fewer than k when the index finds fewer (the catalog is smaller, or HNSW stops short)."""
        import faiss

        k = min(int(k), len(self.item_ids))
        queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
        space = faiss.ParameterSpace()
        for name, value in SEARCH_PARAMETERS.items():
            try:  # ParameterSpace finds the knob inside wrapped indexes (e.g. "RR384,HNSW32") too
                space.set_index_parameter(self.index, name, value(k))
            except RuntimeError:
                pass  # this index has no such knob
        scores, positions = self.index.search(queries, k)
        found = positions >= 0
        ids = np.where(found, self.item_ids[np.clip(positions, 0, None)], None)
        return ids, np.where(found, scores, np.nan)
