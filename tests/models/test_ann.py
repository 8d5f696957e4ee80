"""Nearest items by the bi-encoder (relevance.models.ann): exact and approximate faiss indexes, filled a chunk
at a time."""

from __future__ import annotations

import numpy as np
import pytest

from relevance.models import ann
from relevance.models.ann import NearestItems, index_spec


def _catalog(items: int = 3000, dimension: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dimension))
    vectors = centres[rng.integers(0, 30, items)] + 0.3 * rng.normal(size=(items, dimension))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"item-{n}" for n in range(items)]
    table = dict(zip(ids, vectors.astype(np.float32)))
    return ids, vectors.astype(np.float32), lambda chunk: np.stack([table[i] for i in chunk])


def test_exact_search_returns_the_true_nearest_items_best_first():
    ids, vectors, lookup = _catalog()
    calls = []
    nearest = NearestItems(ids, lookup, 32, on_chunk=calls.append, chunk=1000)
    assert nearest.spec == "Flat" and calls == [1000, 1000, 1000]
    queries = vectors[:50] + 0.01
    found, cosines = nearest.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert (found == np.asarray(ids, dtype=object)[truth]).all()
    assert (np.diff(cosines, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("spec", ["HNSW32,SQ8", "IVF16,Flat", "RR32,HNSW16"])
def test_approximate_indexes_train_on_a_sample_and_find_most_neighbours(monkeypatch, spec):
    monkeypatch.setattr(ann, "TRAIN_ROWS", 1200)  # a random sample of the catalog, not its first rows
    ids, vectors, lookup = _catalog()
    asked = []
    nearest = NearestItems(ids, lambda chunk: asked.append(len(chunk)) or lookup(chunk), 32, spec=spec, chunk=700)
    assert nearest.index.ntotal == len(ids) and asked[0] == 1200 and sum(asked[1:]) == len(ids)
    queries = vectors[::30]
    found, _ = nearest.search(queries, 10)  # the search knobs (efSearch, nprobe) reach wrapped indexes too
    truth = np.asarray(ids, dtype=object)[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.9, recall


def test_auto_is_exact_up_to_a_catalog_size_then_approximate():
    assert index_spec("auto", ann.EXACT_UP_TO) == "Flat"
    assert index_spec("auto", ann.EXACT_UP_TO + 1) == ann.APPROXIMATE
    assert index_spec("IVF64,Flat", 10) == "IVF64,Flat"


def test_bad_input_is_refused_with_what_is_wrong():
    ids, _, lookup = _catalog(100)
    with pytest.raises(ValueError, match="not a faiss index-factory string for 32-dimensional"):
        NearestItems(ids, lookup, 32, spec="NoSuchIndex")
    with pytest.raises(ValueError, match=r"expected vectors of shape \(n, 16\)"):
        NearestItems(ids, lookup, 16)
    with pytest.raises(ValueError, match="catalog is empty"):
        NearestItems([], lookup, 32)
    nearest = NearestItems(ids[:5], lookup, 32)
    found, cosines = nearest.search(np.ones((1, 32), dtype=np.float32), 10)  # k above the catalog: all 5
    assert found.shape == (1, 5) and not np.isnan(cosines).any()
