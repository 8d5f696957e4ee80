"""The student featurizer: the single definition of what the student sees, used by training and by serving.

Feature vector = [q, i, q⊙i, |q−i|] (the bi-encoder embeddings and their interactions; Conneau et al., 2017,
"InferSent"), the cosine, and the cheap lexical features named in LEXICAL_FEATURES. Two pure functions (no I/O)
define it: :func:`lexical_features` (strings and BM25 → the lexical block) and :func:`pair_blocks` (the
embeddings' blocks and their order, for numpy and torch alike). Training puts the vector together with
:func:`assemble`; serving sends the query and item embeddings and the lexical block to the exported graph, which
computes the interactions with the same :func:`pair_blocks` (relevance.student.export), so a served candidate's
vector is the one the student was trained on. :class:`PairFeaturizer` wires them to the offline sources
(embedding cache, BM25 index) for training and batch evaluation.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from relevance.models.text import tokenize_words

FEATURE_VERSION = 2
LEXICAL_FEATURES = (
    "cosine",               # bi-encoder similarity
    "log_bm25",             # BM25 of query vs item text over the catalog
    "bm25_per_term",        # BM25 divided by the number of query terms (comparable across query lengths)
    "terms_matched",        # fraction of query terms found in the item text
    "terms_matched_title",  # … in the title alone
    "prefix_matched",       # … matching on a 4-character prefix (cheap stemming: plurals, inflections)
    "all_terms_matched",    # 1 if every query term is in the item text
    "exact_phrase",         # 1 if the query's words appear in the item text as a contiguous phrase
    "numbers_matched",      # fraction of the query's numeric tokens (sizes, models) found in the item text
    "char3_jaccard_title",  # character-trigram Jaccard of query and title (robust to typos)
    "log_query_terms",
    "log_item_terms",
)
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class _Query:
    """What the lexical features need of a query, computed once per distinct query text."""

    terms: tuple[str, ...]
    counts: dict[str, int]  # each distinct term and how often it occurs (repeats count again)
    prefix_counts: dict[str, int]  # each distinct 4-character prefix and how often
    number_counts: dict[str, int]  # each distinct numeric term (sizes, model numbers) and how often
    trigrams: frozenset[str]
    phrase: str  # " term term … ": the terms as a contiguous phrase


def _count_in(counts: dict[str, int], collections: list[frozenset[str]]) -> list[int]:
    """For each collection, how many of ``counts``' keys it holds, each weighted by its count (a term repeated in
    the query counts again): one set intersection per collection, in C, not a test per term in Python."""
    if not counts:  # e.g. a query without numbers: nothing to intersect
        return [0] * len(collections)
    keys = frozenset(counts)
    if all(count == 1 for count in counts.values()):
        return [len(collection & keys) for collection in collections]
    return [sum(counts[key] for key in collection & keys) for collection in collections]


@functools.lru_cache(maxsize=1 << 16)
def _query_side(query: str) -> _Query:
    terms = tokenize_words(query)
    return _Query(tuple(terms), dict(Counter(terms)), dict(Counter(t[:4] for t in terms)),
                  dict(Counter(t for t in terms if _DIGIT.search(t))), _trigrams(query), f" {' '.join(terms)} ")


@functools.lru_cache(maxsize=1 << 18)
def _item_side(text: str) -> tuple[frozenset[str], frozenset[str], int, str, frozenset[str], float]:
    """(words, 4-character prefixes, word count, joined words, character trigrams, log1p of the word count) of an
    item text or title.

    Cached across calls: items recur across queries (offline) and across requests (online), and this is the
    featurizer's costliest part."""
    tokens = tokenize_words(text)
    return (frozenset(tokens), frozenset(t[:4] for t in tokens), len(tokens), f" {' '.join(tokens)} ",
            _trigrams(text), math.log1p(len(tokens)))


def _trigrams(text: str) -> frozenset[str]:
    padded = f"  {text.lower()} "
    return frozenset(padded[i:i + 3] for i in range(len(padded) - 2))


def lexical_features(queries: list[str], item_texts: list[str], titles: list[str], bm25: np.ndarray) -> np.ndarray:
    """[N, len(LEXICAL_FEATURES) - 1] lexical features (cosine is added by :func:`pair_blocks`).

    Computed a column at a time for each distinct query's rows (a request is one query and its candidates; the
    pair store's shards hold each query's candidates together), with one set intersection per item and column
    rather than a test per query term. The counts are integers and every ratio is formed in float64 before the
    one cast to float32: the values do not depend on how rows are grouped. Logarithms are math's log1p (one
    libm), never numpy's, whose SIMD variants differ by CPU; those of a query's or an item's word count are
    taken once per query or item text."""
    if not (len(queries) == len(item_texts) == len(titles) == len(bm25)):
        raise ValueError(f"expected equal lengths, got queries={len(queries)} item_texts={len(item_texts)} "
                         f"titles={len(titles)} bm25={len(bm25)}")
    n = len(queries)
    item_texts, titles = list(item_texts), list(titles)  # by position, whatever sequence they came in
    rows_of: dict[str, list[int]] = {}
    for row, query in enumerate(queries):
        rows_of.setdefault(query, []).append(row)
    # Per pair: integer counts, one list per column, filled query by query and made an array once; and the
    # logarithms of the word counts.
    columns: list[list[int]] = [[] for _ in range(9)]
    log_terms: list[float] = []
    log_words: list[float] = []
    order: list[int] = []
    for query, rows in rows_of.items():
        q = _query_side(query)
        single = len(rows_of) == 1  # a request: every row, no gathering
        sides = [_item_side(text) for text in (item_texts if single else [item_texts[row] for row in rows])]
        title_sides = [_item_side(title) for title in (titles if single else [titles[row] for row in rows])]
        words = [side[0] for side in sides]
        title_trigrams = [side[4] for side in title_sides]
        shared = [len(trigrams & q.trigrams) for trigrams in title_trigrams]
        for column, values in zip(columns, (
                _count_in(q.counts, words),
                _count_in(q.counts, [side[0] for side in title_sides]),
                _count_in(q.prefix_counts, [side[1] for side in sides]),
                _count_in(q.number_counts, words),
                shared,
                [len(q.trigrams) + len(trigrams) - common for trigrams, common in zip(title_trigrams, shared)],
                [q.phrase in side[3] for side in sides] if q.terms else [False] * len(rows),
                [len(q.terms)] * len(rows),
                [sum(q.number_counts.values())] * len(rows))):
            column.extend(values)
        log_terms.extend([math.log1p(len(q.terms))] * len(rows))
        log_words.extend(side[5] for side in sides)
        order.extend(rows)
    counts = np.array(columns, dtype=np.int64).reshape(len(columns), n)
    matched, matched_title, prefix, numbers_found, shared, union, phrase, n_terms, n_numbers = counts
    score = np.asarray(bm25, dtype=np.float64)
    if len(rows_of) > 1:  # back to the rows' order
        score = score[order]
    per_term = np.maximum(n_terms, 1)
    out = np.empty((len(LEXICAL_FEATURES) - 1, n), dtype=np.float64)  # a row per feature: contiguous writes
    out[0] = [math.log1p(max(value, 0.0)) for value in score.tolist()]
    out[1] = score / per_term
    out[2] = matched / per_term
    out[3] = matched_title / per_term
    out[4] = prefix / per_term
    out[5] = (n_terms > 0) & (matched == n_terms)
    out[6] = phrase
    out[7] = np.divide(numbers_found, n_numbers, out=np.ones(n), where=n_numbers > 0)
    out[8] = np.divide(shared, union, out=np.zeros(n), where=union > 0)
    out[9] = log_terms
    out[10] = log_words
    features = np.ascontiguousarray(out.T, dtype=np.float32)
    if len(rows_of) > 1:
        features[order] = features.copy()
    return features


def pair_blocks(query_embeddings, item_embeddings, lexical) -> list:
    """The student's input blocks [q, i, q⊙i, |q−i|, cosine, lexical]: the one definition of their order and of
    the interactions, for numpy arrays (:func:`assemble`, training) and torch tensors alike (the exported serving
    graph computes the interactions itself, relevance.student.export). ``query_embeddings`` may be one row that
    broadcasts over the items: the serving graph computes the query block's share of the first layer once."""
    product = query_embeddings * item_embeddings
    cosine = product.sum(1)[:, None]  # the vectors are L2-normalised
    return [query_embeddings, item_embeddings, product, abs(query_embeddings - item_embeddings), cosine, lexical]


def assemble(query_embeddings: np.ndarray, item_embeddings: np.ndarray, lexical: np.ndarray) -> np.ndarray:
    """[q, i, q⊙i, |q−i|, cosine, lexical] (:func:`pair_blocks`) as one array: the student's training vector.

    :class:`PairFeaturizer` calls it on freshly computed lexical features (training, evaluation); out-of-core distillation
    (relevance.student.pairstore) calls it per batch on stored lexical features and embeddings gathered from
    memory-mapped tables, so a pair's vector is never stored and never assembled by a second definition."""
    if (query_embeddings.shape != item_embeddings.shape or query_embeddings.ndim != 2
            or lexical.shape != (query_embeddings.shape[0], len(LEXICAL_FEATURES) - 1)):
        raise ValueError(f"expected query and item embeddings of one shape [N, d] and lexical features "
                         f"[N, {len(LEXICAL_FEATURES) - 1}], got {query_embeddings.shape}, {item_embeddings.shape} "
                         f"and {lexical.shape}")
    blocks = pair_blocks(query_embeddings.astype(np.float32, copy=False),
                         item_embeddings.astype(np.float32, copy=False), lexical.astype(np.float32, copy=False))
    return np.concatenate(blocks, axis=1)


def feature_names(dimension: int) -> list[str]:
    blocks = [f"{prefix}_{k}" for prefix in ("q", "i", "qxi", "absdiff") for k in range(dimension)]
    return blocks + list(LEXICAL_FEATURES)


def catalog_hash(item_text: pd.Series) -> str:
    """BM25's IDF and average length come from the catalog: a student records which one it was trained on, and
    the serving export checks it rebuilt the same one."""
    import hashlib

    digest = hashlib.sha256()
    for item_id, text in sorted(item_text.items()):
        digest.update(f"{item_id}\x1f{text}\x1e".encode("utf-8"))
    return digest.hexdigest()[:16]


def featurizer_settings(config) -> dict:
    """What the offline featurizer is built from: the item text, the bi-encoder and BM25's parameters. A student
    records these in its manifest, so evaluation and export rebuild exactly the featurizer it was trained with."""
    return {"text": config.text.model_dump(), "encoder": config.student.encoder,
            "encoder_max_length": config.student.encoder_max_length,
            "bm25": {"k1": config.candidates.k1, "b": config.candidates.b}}


def model_manifest(config, dataset, featurizer: "PairFeaturizer", num_features: int) -> dict:
    """What every model over these features records (students, GBDTs): enough to rebuild its featurizer
    (:func:`build_featurizer` takes this dict) and to trace its training data."""
    encoder = featurizer.cache.encoder
    return {
        "num_grades": dataset.num_grades, "num_features": num_features,
        "feature_version": FEATURE_VERSION, "lexical_features": list(LEXICAL_FEATURES),
        **featurizer_settings(config),
        "encoder_fingerprint": encoder.fingerprint, "embedding_dim": encoder.dimension,
        "catalog_hash": featurizer.catalog_hash, "dataset": dataset.info.__dict__,
        "train_data_hash": dataset.training_data_hash(),
        # The queries kept out of the pool it may have learnt from (judge-eval checks it; None: no holdout).
        "judge_holdout": dataset.judge_holdout_fingerprint(),
    }


def build_featurizer(items: pd.DataFrame, settings: dict, cache_dir,
                     stored_items: pd.DataFrame | None = None, with_bm25: bool = True) -> "PairFeaturizer":
    """The offline featurizer for a catalog, from :func:`featurizer_settings` (training) or a student's manifest
    (evaluation), which hold the same keys. ``with_bm25=False``: its embeddings only (the pool's embedding
    channel), without building a catalog-wide BM25 index; its lexical features are then unavailable.

    ``stored_items`` (indexed by item id: ``embedding``, ``title``, ``lexical_text``), when given, replaces what
    would be computed from ``items``: the pipeline passes the item features it read from the Feast offline
    store, the ones serving reads online."""
    from relevance.models.bm25 import BM25Index, lexical_item_texts
    from relevance.config import TextConfig
    from relevance.student.encoder import BiEncoder, EmbeddingCache

    encoder = BiEncoder(settings["encoder"], settings["encoder_max_length"])
    if stored_items is None:
        item_text = lexical_item_texts(items, TextConfig.model_validate(settings["text"]))
        titles = (items.set_index("item_id")["title"].fillna("").astype(str) if "title" in items.columns
                  else item_text)
        vectors = None
    else:
        item_text, titles, vectors = stored_items["lexical_text"], stored_items["title"], stored_items["embedding"]
    bm25 = (BM25Index(item_text.index.to_numpy(), item_text.tolist(), settings["bm25"]["k1"], settings["bm25"]["b"])
            if with_bm25 else None)
    return PairFeaturizer(item_text, titles, EmbeddingCache(cache_dir, encoder), bm25, vectors)


def model_featurizer(items: pd.DataFrame, manifest: dict, cache_dir) -> tuple["PairFeaturizer", bool]:
    """A saved model's featurizer (a student's or a GBDT's), rebuilt from what its manifest recorded, and
    whether ``items`` is the catalog it was trained on (another one shifts BM25's IDF and average length, and
    with them the BM25 features: the caller says so its own way)."""
    featurizer = build_featurizer(items, manifest, cache_dir)
    return featurizer, manifest.get("catalog_hash") in (None, featurizer.catalog_hash)


class PairFeaturizer:
    """Offline wiring of :func:`lexical_features` and :func:`assemble`: texts from the catalog, embeddings from the cache, BM25 from an index.

    ``item_text`` is the assembled lexical text of each item and ``titles`` its title, both indexed by item id.
    ``item_vectors`` (item id → embedding), when given, replaces the cache for items (vectors read from the
    feature store).
    """

    def __init__(self, item_text: pd.Series, titles: pd.Series, cache, bm25_index,
                 item_vectors: pd.Series | None = None):
        self.item_text = item_text
        self.titles = titles
        self.item_vectors = item_vectors
        self.cache = cache
        self.bm25 = bm25_index

    @property
    def catalog_hash(self) -> str:
        return catalog_hash(self.item_text)

    def query_vectors(self, query_texts: list[str]) -> np.ndarray:
        """Embeddings of the given query texts, in order (each distinct text embedded or looked up once)."""
        unique = list(dict.fromkeys(query_texts))
        vectors = dict(zip(unique, self.cache.embed(unique, "query embeddings")))
        return (np.stack([vectors[q] for q in query_texts]) if query_texts
                else np.zeros((0, self.cache.encoder.dimension), dtype=np.float32))

    def item_vectors_for(self, item_ids: list[str]) -> np.ndarray:
        """Embeddings of the given items, in order: from the feature store's vectors when given, else the cache."""
        unique = list(dict.fromkeys(item_ids))
        if self.item_vectors is not None:
            missing = [i for i in unique if i not in self.item_vectors.index]
            if missing:
                raise KeyError(f"no item embedding for {len(missing)} item(s), e.g. {missing[:5]}")
            stored = self.item_vectors.reindex(unique)
            vectors = dict(zip(unique, stored.map(np.asarray)))
        else:
            vectors = dict(zip(unique, self.cache.embed(self.item_text.reindex(unique).fillna(""), "item embeddings")))
        return (np.stack([vectors[i] for i in item_ids]).astype(np.float32, copy=False) if item_ids
                else np.zeros((0, self.cache.encoder.dimension), dtype=np.float32))

    def embeddings(self, query_texts: list[str], item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Query and item embeddings aligned with the pairs, each distinct text embedded (or looked up) once."""
        return self.query_vectors(list(query_texts)), self.item_vectors_for(list(item_ids))

    def lexical(self, query_texts: list[str], item_ids: list[str]) -> np.ndarray:
        """The pairs' lexical features (BM25 and term matches), without embeddings: what a pair store keeps."""
        if self.bm25 is None:
            raise RuntimeError("this featurizer was built for embeddings only (build_featurizer with_bm25=False)")
        texts = self.item_text.reindex(item_ids).fillna("").tolist()
        titles = self.titles.reindex(item_ids).fillna("").tolist()
        return lexical_features(query_texts, texts, titles, self.bm25.score_pairs(query_texts, item_ids))

    def pair_features(self, pairs: pd.DataFrame, query_text: pd.Series) -> np.ndarray:
        """Features of (query_id, item_id) rows, the query's text looked up in ``query_text``."""
        return self.transform(query_text.reindex(pairs["query_id"]).tolist(), pairs["item_id"])

    def transform(self, query_texts: list[str] | pd.Series, item_ids: list[str] | pd.Series) -> np.ndarray:
        query_texts, item_ids = list(query_texts), list(item_ids)
        return assemble(*self.embeddings(query_texts, item_ids), self.lexical(query_texts, item_ids))
