"""Online scoring of one query against its candidates: what the KServe transformer runs, without KServe.

A request is (query, locale, candidate item ids). Scoring it:

1. the query embedding, from the ONNX query encoder behind a W-TinyLFU cache (queries follow a Zipf law, so a
   frequency-aware cache keeps the head that an LRU loses to one-off queries);
2. the candidates' features (embedding, title, lexical text) from an item source: in serving, the Feast online
   store behind a TTL cache (relevance.platform.item_source.FeastItemSource);
3. BM25 against the catalog's saved index (its IDF and average length are the training catalog's);
4. :func:`relevance.student.featurizer.lexical_features`: the lexical block, the function training used;
5. the student's serving graph (ONNX; relevance.student.export) takes the query embedding, the candidates'
   embeddings and their lexical block, computes the interactions as training did, and gives K grade
   probabilities per candidate; candidates are reranked by expected grade.

Steps 1–4 are :meth:`OnlineScorer.prepare` (the transformer's preprocess); step 5's model call can run here
(:class:`OnnxStudent`) or on a Triton server; :func:`rank` turns probabilities into the response.

Unknown items (not in the online store) are scored with documented defaults, see :data:`UNKNOWN_ITEM_DEFAULTS`,
and flagged in the response.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relevance.config import ServingConfig
from relevance.student.featurizer import FEATURE_VERSION, lexical_features
from relevance.models.metrics import expected_grade
from relevance.common.onnx_session import onnx_session

BUNDLE_MANIFEST = "bundle.json"
STUDENT_INPUTS = ("query", "item", "lexical")  # the serving graph's inputs (relevance.student.export)
ONE_QUERY_GRAPH = "student_one_query"  # the bundle's student graph for one query row (in-process scorers)
UNKNOWN_ITEM_DEFAULTS = {
    "embedding": "zero vector (cosine 0 with every query)",
    "title": "empty",
    "lexical_text": "empty (no term matches)",
    "bm25": 0.0,
}


class RequestError(ValueError):
    """A request that breaks the request schema or a configured limit; the message says which and how."""


class ItemSourceUnavailable(RuntimeError):
    """The item source (in serving, the feature store's online store) did not answer: the request could not be
    scored now, and may be retried; nothing is wrong with the request or the server. The message says which
    store and what happened."""


def validate_request(query, locale, candidates, config: ServingConfig) -> tuple[str, str, list[str]]:
    """(query, locale, candidates) checked against the request schema and limits; returns them normalised."""
    if not isinstance(query, str):
        raise RequestError(f"query: expected a string, got {type(query).__name__}")
    query = query.strip()
    if not query:
        raise RequestError("query: expected a non-empty string")
    if len(query) > config.max_query_chars:
        raise RequestError(f"query: at most {config.max_query_chars} characters, got {len(query)}")
    if locale is None:
        locale = ""
    if not isinstance(locale, str) or len(locale) > 35:  # BCP 47 tags are at most 35 characters
        raise RequestError(f"locale: expected a language tag such as 'en-US', got {str(locale)[:40]!r}")
    if not isinstance(candidates, list):
        raise RequestError(f"candidates: expected a list of item ids, got {type(candidates).__name__}")
    if not candidates:
        raise RequestError("candidates: expected at least one item id, got an empty list")
    if len(candidates) > config.max_candidates:
        raise RequestError(f"candidates: at most {config.max_candidates} per request, got {len(candidates)}")
    for position, item_id in enumerate(candidates):
        if not isinstance(item_id, str) or not item_id:
            raise RequestError(f"candidates[{position}]: expected a non-empty string item id, got {item_id!r}"[:200])
        if len(item_id) > config.max_item_id_chars:
            raise RequestError(f"candidates[{position}]: item ids are at most {config.max_item_id_chars} "
                               f"characters, got {len(item_id)}")
    if len(set(candidates)) != len(candidates):
        duplicate = next(i for i, count in Counter(candidates).items() if count > 1)
        raise RequestError(f"candidates: expected unique item ids, {duplicate[:80]!r} appears more than once")
    return query, locale, candidates


class OnnxStudent:
    """The student's serving graph in process (ONNX Runtime): :meth:`Prepared.student_inputs` → ``probs`` [N, K]."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != STUDENT_INPUTS:
            raise ValueError(f"{self.path}: the student graph takes {list(names)}, this server sends "
                             f"{list(STUDENT_INPUTS)}; re-export the bundle with `relevance export`")

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["probs"], inputs)[0]


class QueryEncoder:
    """The ONNX query encoder with the tokenizer it was exported with (same truncation as the bi-encoder)."""

    def __init__(self, directory: str | Path, max_length: int, model_file: str = "query_encoder.onnx",
                 threads: int = 1):
        from transformers import AutoTokenizer

        directory = Path(directory)
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
        self.tokenizer.padding_side = "right"  # what the exported (fused) encoder's attention assumes
        self.session = onnx_session(directory / model_file, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.max_length = max_length

    def encode(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="np", return_token_type_ids=True)
        return self.session.run(["embedding"], {name: batch[name].astype(np.int64) for name in self.input_names})[0]


@dataclass
class ItemFeatures:
    """What the featurizer needs of each candidate, aligned with the request's ids."""

    embeddings: np.ndarray  # [n, d] float32, L2-normalised; zeros where unknown
    titles: list[str]
    texts: list[str]
    known: np.ndarray  # [n] bool


class CatalogItemSource:
    """Candidate features straight from the catalog: titles and lexical texts as given, embeddings from ``embed``
    (texts → vectors, e.g. the run's embedding cache). The offline stand-in for the feature store, for replaying
    queries through a serving bundle without a Feast deployment; the Feast tables hold the same three values
    (relevance.platform.feature_store.feature_tables)."""

    def __init__(self, titles, texts, embed, dimension: int):
        self.titles, self.texts, self.embed, self.dimension = titles, texts, embed, dimension

    def get(self, item_ids: list[str]) -> ItemFeatures:
        known = np.array([i in self.texts.index for i in item_ids], dtype=bool)
        embeddings = np.zeros((len(item_ids), self.dimension), dtype=np.float32)
        found = [i for i, k in zip(item_ids, known) if k]
        if found:
            embeddings[known] = self.embed(self.texts.reindex(found).tolist())
        return ItemFeatures(embeddings, [str(self.titles.get(i, "")) if k else "" for i, k in zip(item_ids, known)],
                            [str(self.texts[i]) if k else "" for i, k in zip(item_ids, known)], known)


def lookup_cache(size: int):
    """A W-TinyLFU cache (theine) of ``size`` entries, or None for size 0 (no cache)."""
    if size <= 0:
        return None
    from theine import Cache

    return Cache(size)


ItemRow = tuple  # (embedding [d] float32, title, lexical text), or None for an item the source does not know


class ItemCache:
    """Candidates' features by item id, bounded and expiring, looked up a whole request at a time.

    Every request looks up about a hundred ids. A cache with a Python call per key (theine, as the query cache
    uses) costs ~1 µs a key, and stacking the rows' vectors ~40 µs more: together more than the student's graph.
    Here the vectors live in one preallocated [capacity, d] array (np.zeros: pages are mapped when first
    written), an id's slot is one dict lookup, expiry is checked for all of a request's slots at once, and the
    request's vectors are one gather. Eviction is CLOCK, an LRU approximation (a slot read since the hand last
    passed it is spared once); W-TinyLFU's frequency sketch pays off for the Zipf head of queries, whereas a
    catalog's candidates are whatever retrieval sends. Unknown ids are cached too (``None`` rows): a burst of
    them must not hammer the store. Not thread-safe: the server calls it from its event loop only."""

    def __init__(self, capacity: int, dimension: int, ttl_seconds: float, clock=time.monotonic):
        if capacity < 1:
            raise ValueError(f"an item cache holds at least one item, got capacity {capacity}")
        if not ttl_seconds > 0:
            raise ValueError(f"an item cache keeps items a positive time, got ttl_seconds {ttl_seconds}")
        self.capacity, self.dimension, self.ttl, self.clock = capacity, dimension, float(ttl_seconds), clock
        self.slot_of: dict[str, int] = {}
        self.ids: list[str | None] = [None] * capacity
        self.titles: list[str] = [""] * capacity
        self.texts: list[str] = [""] * capacity
        self.embeddings = np.zeros((capacity, dimension), dtype=np.float32)
        self.known = np.zeros(capacity, dtype=bool)
        self.expires = np.full(capacity, -np.inf)
        self.referenced = np.zeros(capacity, dtype=bool)
        self.used = 0  # slots handed out so far; past capacity, the hand picks victims
        self.hand = 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def lookup(self, item_ids: list[str]) -> np.ndarray:
        """Each id's slot, -1 where it is not cached or has expired; the hits are marked as read."""
        get = self.slot_of.get
        slots = np.fromiter((get(item_id, -1) for item_id in item_ids), dtype=np.int64, count=len(item_ids))
        cached = slots >= 0
        fresh = np.zeros(len(slots), dtype=bool)
        fresh[cached] = self.expires[slots[cached]] > self.clock()
        self.referenced[slots[fresh]] = True
        slots[~fresh] = -1
        return slots

    def put(self, rows: dict[str, ItemRow | None]) -> None:
        """Cache each id's row (None: unknown) for ``ttl_seconds`` from now, evicting as needed."""
        expires = self.clock() + self.ttl
        for item_id, row in rows.items():
            slot = self.slot_of.get(item_id)
            if slot is None:
                slot = self._free_slot()
                self.slot_of[item_id] = slot
                self.ids[slot] = item_id
            if row is None:
                self.embeddings[slot] = 0.0
                self.titles[slot], self.texts[slot], self.known[slot] = "", "", False
            else:
                self.embeddings[slot] = row[0]
                self.titles[slot], self.texts[slot], self.known[slot] = row[1], row[2], True
            self.expires[slot], self.referenced[slot] = expires, False

    def _free_slot(self) -> int:
        if self.used < self.capacity:
            self.used += 1
            return self.used - 1
        while self.referenced[self.hand]:  # ends within one sweep: each pass clears what it spares
            self.referenced[self.hand] = False
            self.hand = (self.hand + 1) % self.capacity
        slot, self.hand = self.hand, (self.hand + 1) % self.capacity
        del self.slot_of[self.ids[slot]]
        return slot


@dataclass
class Prepared:
    """The transformer's output for one request: the student's inputs and what the response needs besides."""

    query: str
    locale: str
    item_ids: list[str]
    query_embedding: np.ndarray  # [d] float32
    item_embeddings: np.ndarray  # [n, d] float32, zeros where unknown
    lexical: np.ndarray  # [n, L] float32 (relevance.student.featurizer.lexical_features)
    unknown: np.ndarray  # [n] bool
    query_cache_hit: bool

    def student_inputs(self, per_candidate: bool = False) -> dict[str, np.ndarray]:
        """The serving graph's inputs. The query goes as one row, whose share of the first layer the graph then
        computes once, or with ``per_candidate`` as one row per candidate: what a batching predictor (Triton)
        needs, since requests batched together must agree on their rows."""
        query = self.query_embedding[None, :]
        if per_candidate:
            query = np.repeat(query, len(self.item_ids), axis=0)
        return {"query": query, "item": self.item_embeddings, "lexical": self.lexical}


def batch_inputs(prepared: list[Prepared]) -> dict[str, np.ndarray]:
    """Several requests' inputs as one batch (one query row per candidate), in order."""
    parts = [p.student_inputs(per_candidate=True) for p in prepared]
    return {name: np.concatenate([part[name] for part in parts]) for name in STUDENT_INPUTS}


@dataclass
class Ranking:
    item_ids: list[str]
    scores: np.ndarray  # expected grade, best first
    probs: np.ndarray  # [n, K]
    unknown: np.ndarray  # [n] bool

    def to_dict(self) -> dict:
        # Through numpy's tolist (one C loop), not per-element Python floats: this is on every request's path.
        scores, probs, unknown = self.scores.tolist(), self.probs.tolist(), self.unknown.tolist()
        return {"items": [{"item_id": item_id, "score": scores[n], "probs": probs[n], "unknown": unknown[n]}
                          for n, item_id in enumerate(self.item_ids)]}


def rank(prepared: Prepared, probs: np.ndarray) -> Ranking:
    """Candidates by expected grade, best first (ties keep the request's order)."""
    if probs.ndim != 2 or len(probs) != len(prepared.item_ids):
        raise ValueError(f"expected probabilities of shape [{len(prepared.item_ids)}, K], got {list(probs.shape)}")
    scores = expected_grade(probs)
    order = np.argsort(-scores, kind="stable")
    return Ranking([prepared.item_ids[i] for i in order], scores[order], probs[order], prepared.unknown[order])


class ServingBundle:
    """An exported student's serving files (written by :func:`relevance.student.export.export_bundle`)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        path = self.directory / BUNDLE_MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{self.directory}: not a serving bundle (no {BUNDLE_MANIFEST}); build one with "
                                    "`relevance export`")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("student_inputs") != list(STUDENT_INPUTS):
            raise ValueError(f"{self.directory}: exported before the student's serving graph took "
                             f"{list(STUDENT_INPUTS)} (its inputs: {self.manifest.get('student_inputs', ['features'])}); "
                             "re-export it with `relevance export`")

    def in_process_graph(self, int8: bool) -> Path:
        """The student graph an in-process scorer runs (one query row a request): the one-query graph in fp32;
        the student graph in int8 (faster than the one-query graph, which int8 cannot quantise), or for a bundle
        exported before the one-query graph existed."""
        one_query = self.directory / f"{ONE_QUERY_GRAPH}.onnx"
        return one_query if not int8 and one_query.exists() else self.model_file("student", int8)

    def model_file(self, name: str, int8: bool) -> Path:
        path = self.directory / (f"{name}-int8.onnx" if int8 else f"{name}.onnx")
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing" + ("; export with --int8" if int8 else ""))
        return path


class OnlineScorer:
    def __init__(self, bundle: ServingBundle, items, config: ServingConfig, bm25=None,
                 student: OnnxStudent | None = None):
        from relevance.models.bm25 import BM25Index

        self.bundle = bundle
        self.config = config
        manifest = bundle.manifest
        # Checked once here, not per request: a bundle from other featurizer code is refused at start-up.
        if manifest.get("feature_version") != FEATURE_VERSION:
            raise ValueError(f"{bundle.directory}: the bundle's student takes feature version "
                             f"{manifest.get('feature_version')}, this code computes {FEATURE_VERSION}")
        self.items = items
        self.encoder = QueryEncoder(bundle.directory, manifest["encoder_max_length"],
                                    bundle.model_file("query_encoder", config.int8).name, config.onnx_threads)
        self.bm25 = bm25 or BM25Index.load(bundle.directory / "bm25")
        self.student = student
        self.query_cache = lookup_cache(config.query_cache_size)
        self.query_cache_hits = 0
        self.query_cache_misses = 0

    def query_embedding(self, query: str) -> tuple[np.ndarray, bool]:
        if self.query_cache is not None:
            vector, hit = self.query_cache.get(query)
            if hit:
                self.query_cache_hits += 1
                return vector, True
        self.query_cache_misses += 1
        vector = self.encoder.encode([query])[0]
        if self.query_cache is not None:
            self.query_cache.set(query, vector)
        return vector, False

    def prepare(self, query, locale, candidates) -> Prepared:
        query, locale, candidates = validate_request(query, locale, candidates, self.config)
        vector, hit = self.query_embedding(query)
        items = self.items.get(candidates)
        lexical = lexical_features([query] * len(candidates), items.texts, items.titles,
                                   self.bm25.score_items(query, candidates))
        return Prepared(query, locale, candidates, np.asarray(vector, dtype=np.float32), items.embeddings, lexical,
                        ~items.known, hit)

    def score(self, query, locale, candidates) -> Ranking:
        """prepare → in-process student → rank (the whole request without a network hop)."""
        if self.student is None:
            raise RuntimeError("this scorer has no in-process student; pass one or call prepare() and a predictor")
        prepared = self.prepare(query, locale, candidates)
        return rank(prepared, self.student.predict(prepared.student_inputs()))
