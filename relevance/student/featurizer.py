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
import hashlib
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


# The term-match counts are found by key: every word, 4-character prefix and character trigram an item's text or
# title holds becomes a 64-bit key (Python's hash of the field and the string), one sorted array per item, and a
# query's keys carry what each match adds to which count. A request's counts are then a few array operations over
# its candidates' keys instead of set intersections per candidate: those touch a hash table per candidate, which a
# server cycling through many queries no longer holds in the CPU's caches (0.41 ms a request cycling through 200
# Home Depot queries, against 0.15 ms for one repeated; 0.26 ms by key). Two different strings share a key with
# probability 2⁻⁶⁴ per pair of keys.
_TEXT_WORD, _TEXT_PREFIX, _TITLE_WORD, _TITLE_TRIGRAM = range(4)
_COUNTS = 5  # matched, matched_title, prefix, numbers_found, shared (title trigrams)
_EMPTY = np.iinfo(np.int64).min  # an unused slot of a query's table; no key takes this value (see _key)
# A query's direct-mapped table holds at most 2¹¹ slots (24 KiB); a long query (up to 512 characters, hundreds of
# keys) takes a binary search instead (the same counts), so that the cache of query sides stays bounded (8,192 ×
# 24 KiB at most).
_MAX_TABLE_BITS = 11


def _key(field: int, value: str) -> int:
    # The string's own hash (SipHash: every bit mixed), not a tuple's: hashes of tuples that differ only in a
    # small integer share low bits, and a query's table is indexed by the low bits.
    key = hash(f"{field}\x1f{value}")
    return key + 1 if key == _EMPTY else key


@dataclass(frozen=True)
class _Query:
    """What the lexical features need of a query, computed once per distinct query text."""

    keys: np.ndarray  # [k] int64, sorted: the query's words, prefixes and trigrams, each under its field
    weights: np.ndarray  # [k, _COUNTS] int64: what an item holding keys[j] adds to each count
    table: np.ndarray | None  # [2^m] int64: keys[j] at slot (keys[j] >> shift) & (2^m − 1), _EMPTY elsewhere
    shift: int  # which of the keys' bits index the table (None table: the keys share a slot in every try)
    position: np.ndarray | None  # [2^m] int32: j at keys[j]'s slot
    n_terms: int
    n_numbers: int  # numeric terms (sizes, model numbers), repeats counted
    n_trigrams: int
    phrase: str  # " term term … ": the terms as a contiguous phrase
    log_terms: float


@functools.lru_cache(maxsize=1 << 13)  # the server's query cache holds 10,000 by default: most of its head
def _query_side(query: str) -> _Query:
    terms = tokenize_words(query)
    weights: dict[int, list[int]] = {}

    def add(key: int, count_index: int, count: int) -> None:
        weights.setdefault(key, [0] * _COUNTS)[count_index] += count

    numbers = 0
    for term, count in Counter(terms).items():  # a term repeated in the query counts again
        add(_key(_TEXT_WORD, term), 0, count)
        add(_key(_TITLE_WORD, term), 1, count)
        if _DIGIT.search(term):
            add(_key(_TEXT_WORD, term), 3, count)
            numbers += count
    for prefix, count in Counter(term[:4] for term in terms).items():
        add(_key(_TEXT_PREFIX, prefix), 2, count)
    trigrams = _trigrams(query)
    for trigram in trigrams:
        add(_key(_TITLE_TRIGRAM, trigram), 4, 1)
    keys = np.array(sorted(weights), dtype=np.int64)
    table = position = None
    # The smallest power-of-two table in which no two of the query's keys share a slot, indexed by one of four
    # windows of the keys' bits (independent, as the hash mixes every bit): an item key is then looked up with a
    # shift, a mask and one comparison. A typical query's ~30 keys share a slot of a 2¹¹ table in one window out of
    # five; 90 of Home Depot's first 8,000 queries (the longest) take the binary search, and the median table is
    # 3 KiB.
    shift = 0
    for bits, shift in ((bits, shift) for bits in range(max(len(keys), 1).bit_length() + 1, _MAX_TABLE_BITS + 1)
                        for shift in (0, 16, 32, 48)):
        slots = (keys >> shift) & ((1 << bits) - 1)
        if len(np.unique(slots)) == len(slots):
            table = np.full(1 << bits, _EMPTY, dtype=np.int64)
            table[slots] = keys
            position = np.zeros(1 << bits, dtype=np.int32)
            position[slots] = np.arange(len(keys), dtype=np.int32)
            break
    counts = np.array([weights[key] for key in keys.tolist()], dtype=np.int64).reshape(-1, _COUNTS)
    for array in (keys, counts, table, position):  # shared by every later call: never written to
        if array is not None:
            array.flags.writeable = False
    return _Query(keys, counts, table, shift, position, len(terms), numbers, len(trigrams), f" {' '.join(terms)} ",
                  math.log1p(len(terms)))


@functools.lru_cache(maxsize=1 << 18)
def _item_side(text: str, title: str) -> tuple[bytes, int, str, int, float]:
    """(keys as a sorted int64 array's bytes, their number, joined words, title trigrams, log1p of the word count)
    of an item. Bytes, because a request joins its candidates' keys in one ``bytes.join`` (~40 µs less than an
    ``np.concatenate`` of 100 arrays). Cached: items recur across queries and requests; the costliest part."""
    tokens = tokenize_words(text)
    trigrams = _trigrams(title)
    keys = ({_key(_TEXT_WORD, token) for token in tokens} | {_key(_TEXT_PREFIX, token[:4]) for token in tokens}
            | {_key(_TITLE_WORD, token) for token in tokenize_words(title)}
            | {_key(_TITLE_TRIGRAM, trigram) for trigram in trigrams})
    return (np.array(sorted(keys), dtype=np.int64).tobytes(), len(keys), f" {' '.join(tokens)} ", len(trigrams),
            math.log1p(len(tokens)))


def _trigrams(text: str) -> frozenset[str]:
    padded = f"  {text.lower()} "
    return frozenset(padded[i:i + 3] for i in range(len(padded) - 2))


def _counts(query: _Query, keys: tuple[bytes, ...] | list[bytes], lengths) -> np.ndarray:
    """[n, _COUNTS] int64: for each item (keys and their number from _item_side), its query keys' weights summed."""
    n = len(keys)
    if not len(query.keys) or not n:
        return np.zeros((n, _COUNTS), dtype=np.int64)
    joined = np.frombuffer(b"".join(keys), dtype=np.int64)
    if query.table is not None:
        slots = ((joined >> query.shift) if query.shift else joined) & (len(query.table) - 1)
        hits = np.flatnonzero(query.table[slots] == joined)
        matched = query.position[slots[hits]]
    else:
        at = np.minimum(np.searchsorted(query.keys, joined), len(query.keys) - 1)
        hits = np.flatnonzero(query.keys[at] == joined)
        matched = at[hits]
    ends = np.cumsum(lengths)
    owner = np.searchsorted(ends, hits, side="right")  # the item each hit belongs to
    cells = (owner[:, None] * _COUNTS + np.arange(_COUNTS)).ravel()
    summed = np.bincount(cells, weights=query.weights[matched].ravel(), minlength=n * _COUNTS)
    return summed.reshape(n, _COUNTS).astype(np.int64)  # sums of small integers: exact in float64


def lexical_features(queries: list[str], item_texts: list[str], titles: list[str], bm25: np.ndarray) -> np.ndarray:
    """[N, len(LEXICAL_FEATURES) - 1] lexical features (cosine is added by :func:`pair_blocks`).

    Computed a distinct query's rows at a time (a request is one query and its candidates; the pair store's
    shards hold each query's candidates together), its counts by key (see _key). The counts are integers and
    every ratio is formed in float64 before the one cast to float32: the values do not depend on how rows are
    grouped. Logarithms are math's log1p (one libm), never numpy's, whose SIMD variants differ by CPU; those of
    a query's or an item's word count are taken once per query or item."""
    if not (len(queries) == len(item_texts) == len(titles) == len(bm25)):
        raise ValueError(f"expected equal lengths, got queries={len(queries)} item_texts={len(item_texts)} "
                         f"titles={len(titles)} bm25={len(bm25)}")
    n = len(queries)
    queries, item_texts, titles = list(queries), list(item_texts), list(titles)  # by position, whatever they came in
    if n and queries.count(queries[0]) == n:  # a request: one query, every row (no grouping, no gathering)
        rows_of: dict[str, list[int] | None] = {queries[0]: None}
    else:
        rows_of = {}
        for row, query in enumerate(queries):
            rows_of.setdefault(query, []).append(row)
    counts = np.zeros((n, _COUNTS), dtype=np.int64)
    per_query = np.zeros((3, n), dtype=np.int64)  # terms, numeric terms, trigrams of the query
    title_trigrams = np.zeros(n, dtype=np.int64)
    phrase = np.zeros(n, dtype=bool)
    log_terms, log_words = np.zeros(n), np.zeros(n)
    for query, rows in rows_of.items():
        q = _query_side(query)
        if rows is None:
            at, sides = slice(None), list(map(_item_side, item_texts, titles))
        else:
            at, sides = np.asarray(rows), [_item_side(item_texts[row], titles[row]) for row in rows]
        keys, lengths, joined, trigrams, words = zip(*sides)
        counts[at] = _counts(q, keys, lengths)
        per_query[:, at] = np.array([[q.n_terms], [q.n_numbers], [q.n_trigrams]])
        title_trigrams[at] = trigrams
        if q.n_terms:
            phrase[at] = [q.phrase in text for text in joined]
        log_terms[at] = q.log_terms
        log_words[at] = words
    matched, matched_title, prefix, numbers_found, shared = counts.T
    n_terms, n_numbers, query_trigrams = per_query
    union = query_trigrams + title_trigrams - shared
    score = np.asarray(bm25, dtype=np.float64)
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
    return np.ascontiguousarray(out.T, dtype=np.float32)


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
    digest = hashlib.sha256()
    for item_id, text in sorted(item_text.items()):
        digest.update(f"{item_id}\x1f{text}\x1e".encode("utf-8"))
    return digest.hexdigest()[:16]


def featurizer_settings(config) -> dict:
    """What the offline featurizer is built from: the item text, the bi-encoder and BM25's parameters. A student
    records these in its manifest, so evaluation and export rebuild exactly the featurizer it was trained with."""
    return {"text": config.text.model_dump(), "encoder": config.student.encoder,
            "encoder_max_length": config.student.encoder_max_length, "query_encoder": config.student.query_encoder,
            "bm25": {"k1": config.candidates.k1, "b": config.candidates.b}}


def model_manifest(config, dataset, featurizer: "PairFeaturizer", num_features: int) -> dict:
    """What every model over these features records (students, GBDTs): enough to rebuild its featurizer
    (:func:`build_featurizer` takes this dict) and to trace its training data."""
    from pathlib import Path

    from relevance.models.backbones import resolve_backbone

    encoder = featurizer.cache.encoder
    settings = featurizer_settings(config)
    # The manifest's encoder names rebuild the featurizer at evaluation and export: they must be the ones that
    # embedded these features, or the model would be scored on vectors it never saw.
    query = featurizer.query_cache.encoder if featurizer.query_cache is not None else None
    for side, named, used in (("encoder", settings["encoder"], encoder),
                              ("query_encoder", settings.get("query_encoder"), query)):
        if (named is None) != (used is None) or (named is not None and named != used.name and (
                Path(resolve_backbone(named)).resolve() != Path(used.path).resolve())):
            raise ValueError(f"model manifest: the config names student.{side} {named!r}, but the features were "
                             f"embedded by {None if used is None else used.name!r}")
    return {
        "num_grades": dataset.num_grades, "num_features": num_features,
        "feature_version": FEATURE_VERSION, "lexical_features": list(LEXICAL_FEATURES),
        **settings,
        "encoder_fingerprint": encoder.fingerprint, "embedding_dim": encoder.dimension,
        # The query side's weights when a separate query tower embeds the queries (None: the encoder's).
        "query_encoder_fingerprint": query.fingerprint if query is not None else None,
        "catalog_hash": featurizer.catalog_hash, "dataset": dataset.info.__dict__,
        "train_data_hash": dataset.training_data_hash(),
        # The queries kept out of the pool it may have learnt from (judge-eval checks it; None: no holdout).
        "judge_holdout": dataset.judge_holdout_fingerprint(),
    }


def build_featurizer(items: pd.DataFrame, settings: dict, cache_dir,
                     stored_items: pd.DataFrame | None = None, with_bm25: bool = True,
                     with_encoder: bool = True) -> "PairFeaturizer":
    """The offline featurizer for a catalog, from :func:`featurizer_settings` (training) or a student's manifest
    (evaluation), which hold the same keys. ``with_bm25=False``: its embeddings only (the pool's embedding
    channel), without building a catalog-wide BM25 index; its lexical features are then unavailable.

    ``stored_items`` (indexed by item id: ``embedding``, ``title``, ``lexical_text``), when given, replaces what
    would be computed from ``items``: the pipeline passes the item features it read from the Feast offline
    store, the ones serving reads online. ``with_encoder=False``: its lexical features only (no encoder loaded)."""
    from relevance.models.bm25 import BM25Index, lexical_item_texts
    from relevance.config import TextConfig

    cache, query_cache = _encoder_caches(settings, cache_dir) if with_encoder else (None, None)
    if stored_items is None:
        item_text = lexical_item_texts(items, TextConfig.model_validate(settings["text"]))
        titles = (items.set_index("item_id")["title"].fillna("").astype(str) if "title" in items.columns
                  else item_text)
        vectors = None
    else:
        item_text, titles, vectors = stored_items["lexical_text"], stored_items["title"], stored_items["embedding"]
    bm25 = (BM25Index(item_text.index.to_numpy(), item_text.tolist(), settings["bm25"]["k1"], settings["bm25"]["b"])
            if with_bm25 else None)
    return PairFeaturizer(item_text, titles, cache, bm25, vectors, query_cache)


def _encoder_caches(settings: dict, cache_dir) -> tuple:
    """The embedding caches of the encoder and, when one is named, of its separate query tower."""
    from relevance.student.encoder import BiEncoder, EmbeddingCache, check_query_tower, separate_query_tower

    encoder = BiEncoder(settings["encoder"], settings["encoder_max_length"])
    query_cache = None
    if settings.get("query_encoder"):  # manifests from before separate query towers have no such key
        query_encoder = BiEncoder(settings["query_encoder"], settings["encoder_max_length"])
        if query_encoder.dimension != encoder.dimension:
            raise ValueError(f"query encoder {settings['query_encoder']} gives {query_encoder.dimension}-d vectors, "
                             f"the item encoder {settings['encoder']} {encoder.dimension}-d: a query tower must "
                             "embed into the item tower's space (relevance.student.query_tower)")
        check_query_tower(query_encoder, encoder)
        query_cache = EmbeddingCache(cache_dir, query_encoder)
    elif separate_query_tower(encoder.path) is not None:
        raise ValueError(f"{settings['encoder']} holds separate towers (student.towers.shared false): it embeds the "
                         f"items; name its {separate_query_tower(encoder.path)} as student.query_encoder for the "
                         "queries")
    return EmbeddingCache(cache_dir, encoder), query_cache


def model_featurizer(items: pd.DataFrame, manifest: dict, cache_dir) -> tuple["PairFeaturizer", bool]:
    """A saved model's featurizer (a student's or a GBDT's), rebuilt from what its manifest recorded, and
    whether ``items`` is the catalog it was trained on (another one shifts BM25's IDF and average length, and
    with them the BM25 features: the caller says so its own way)."""
    featurizer = build_featurizer(items, manifest, cache_dir)
    # The encoders named must still be the ones that embedded the model's features: a path retrained since (or a
    # manifest from before manifests named the tuned towers) would score the model on vectors it never saw.
    query = featurizer.query_cache.encoder.fingerprint if featurizer.query_cache is not None else None
    for side, recorded, now in (("encoder", manifest.get("encoder_fingerprint"), featurizer.cache.encoder.fingerprint),
                                ("query_encoder", manifest.get("query_encoder_fingerprint"), query)):
        if recorded is not None and recorded != now:
            raise ValueError(f"the model was trained on {side} {manifest.get(side) or manifest.get('encoder')!r} with "
                             f"fingerprint {recorded}, but it now has {now}: retrain the model (delete it and rerun "
                             "its step) on the encoders as they are")
    return featurizer, manifest.get("catalog_hash") in (None, featurizer.catalog_hash)


class PairFeaturizer:
    """Offline wiring of :func:`lexical_features` and :func:`assemble`: texts from the catalog, embeddings from the cache, BM25 from an index.

    ``item_text`` is the assembled lexical text of each item and ``titles`` its title, both indexed by item id.
    ``item_vectors`` (item id → embedding), when given, replaces the cache for items (vectors read from the
    feature store). ``query_cache``, when given, embeds the queries (a separate query tower, student.query_encoder);
    ``cache`` then embeds the items only.
    """

    def __init__(self, item_text: pd.Series, titles: pd.Series, cache, bm25_index,
                 item_vectors: pd.Series | None = None, query_cache=None):
        self.item_text = item_text
        self.titles = titles
        self.item_vectors = item_vectors
        self.cache = cache
        self.query_cache = query_cache
        self.bm25 = bm25_index

    @property
    def query_fingerprint(self) -> str:
        """The weights behind the query vectors: the query tower's, or the encoder's."""
        return self._query_side.encoder.fingerprint

    @property
    def _query_side(self):
        # Not `query_cache or cache`: an empty cache is falsy (it has a length).
        return self.query_cache if self.query_cache is not None else self.cache

    @property
    def catalog_hash(self) -> str:
        return catalog_hash(self.item_text)

    @property
    def lexical_fingerprint(self) -> str:
        """What its lexical features are computed from: their definition, the catalog's texts and titles (BM25's
        IDF and lengths, the term matches) and BM25's parameters."""
        bm25 = (self.bm25.retriever.k1, self.bm25.retriever.b) if self.bm25 is not None else None
        titles = catalog_hash(self.titles.fillna("").astype(str))  # as lexical() reads them
        return hashlib.sha256(f"{FEATURE_VERSION}:{self.catalog_hash}:{titles}:{bm25}".encode()).hexdigest()[:16]

    def query_vectors(self, query_texts: list[str]) -> np.ndarray:
        """Embeddings of the given query texts, in order (each distinct text embedded or looked up once)."""
        unique = list(dict.fromkeys(query_texts))
        vectors = dict(zip(unique, self._query_side.embed(unique, "query embeddings")))
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
