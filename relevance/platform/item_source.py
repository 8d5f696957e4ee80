"""What serving reads of the feature store: the student's item features from Feast's online store, behind a TTL
cache (:class:`FeastItemSource`), for the project a serving bundle names, refused at start unless it finished
materializing and its item embeddings are the bundle's encoder's (relevance.platform.feature_store builds,
versions and materializes the projects)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relevance.platform.feature_store import open_store, require_encoder, require_materialized, student_features
from relevance.student.scoring import ItemCache, ItemFeatures, ItemSourceUnavailable


def online_item_features(store, item_ids: list[str]) -> dict[str, list]:
    """The online store's student features for ``item_ids`` (None where an item is unknown), as Feast returns
    them: {"item_id", "embedding", "title", "lexical_text"} → one list each."""
    return store.get_online_features(features=student_features(store),
                                     entity_rows=[{"item_id": item_id} for item_id in item_ids]).to_dict()


def _unanswered_errors() -> tuple[type[BaseException], ...]:
    """What an online store raises when it does not answer (refused, reset, timed out, still loading), as
    opposed to a broken repo or a bug: socket errors, and redis-py's connection and timeout errors (redis-py
    comes with feast[redis]; a SQLite-only install has no Redis to lose)."""
    errors: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:
        return errors
    return (*errors, RedisConnectionError, RedisTimeoutError)


class FeastItemSource:
    """Candidate features from the Feast online store, with a TTL cache in front
    (:class:`relevance.student.scoring.ItemCache`).

    The store is read once per request for the ids the cache lacks; values live ``ttl_seconds``, so a
    materialization is visible within that time. Unknown ids are cached too: a burst of them must not hammer
    the store.

    Only a project whose materialization finished is served (:func:`require_materialized`): the repo's, or
    ``project`` (the serving bundle's) through the repo's registry and online store, and, given the student's
    ``encoder_fingerprint``, only one whose item embeddings that encoder made (:func:`require_encoder`). When
    the online store does
    not answer, a read raises :class:`ItemSourceUnavailable` within about a second (:data:`SERVING_REDIS_OPTIONS`)
    and the next one tries again: Feast keeps one redis-py client, whose pool reconnects once Redis is back.
    """

    def __init__(self, repo: str | Path, dimension: int, cache_size: int = 200_000, ttl_seconds: float = 300.0,
                 project: str | None = None, encoder_fingerprint: str | None = None):
        self.store = open_store(repo, serving=True, project=project)
        require_materialized(self.store)
        if encoder_fingerprint is not None:
            require_encoder(self.store, encoder_fingerprint)
        self.project = self.store.config.project
        self.dimension = dimension
        self.cache = ItemCache(cache_size, dimension, ttl_seconds) if cache_size > 0 else None
        self.reads = 0
        self._unanswered = _unanswered_errors()

    @classmethod
    def for_bundle(cls, repo: str | Path, manifest: dict, cache_size: int = 200_000,
                   ttl_seconds: float = 300.0) -> "FeastItemSource":
        """The item source a serving bundle (its bundle.json ``manifest``) reads: the feature project it names
        (the repo's when it names none), refused unless its item embeddings are the bundle's encoder's."""
        return cls(repo, int(manifest["embedding_dim"]), cache_size, ttl_seconds,
                   project=manifest.get("feature_project"), encoder_fingerprint=manifest["encoder_fingerprint"])

    def _read(self, item_ids: list[str]) -> dict[str, tuple[np.ndarray, str, str] | None]:
        self.reads += 1
        try:
            rows = online_item_features(self.store, item_ids)
        except self._unanswered as error:
            # redis-py's messages name the host and port (never the password) and end with a full stop.
            raise ItemSourceUnavailable(f"the feature store (online store) does not answer: "
                                        f"{str(error).rstrip('.') or type(error).__name__}") from error
        found: dict[str, tuple[np.ndarray, str, str] | None] = {}
        for item_id, vector, title, text in zip(item_ids, rows["embedding"], rows["title"], rows["lexical_text"]):
            if vector is None:
                found[item_id] = None
                continue
            vector = np.asarray(vector, dtype=np.float32)
            if vector.shape != (self.dimension,):
                raise ValueError(f"online store: item {item_id!r} has an embedding of shape {vector.shape}, the "
                                 f"student expects ({self.dimension},); materialize the student's features")
            found[item_id] = (vector, title or "", text or "")
        return found

    def get(self, item_ids: list[str]) -> ItemFeatures:
        cache = self.cache
        n = len(item_ids)
        if cache is None:
            read = self._read(list(dict.fromkeys(item_ids))) if n else {}
            return self._features(item_ids, np.full(n, -1), read)
        slots = cache.lookup(item_ids)
        missing = slots < 0
        if not missing.any():  # the common case: whole columns gathered from the cache
            index = slots.tolist()
            titles, texts = cache.titles, cache.texts
            return ItemFeatures(cache.embeddings[slots], [titles[s] for s in index], [texts[s] for s in index],
                                cache.known[slots])
        # The rows read go into the answer directly, not back out of the cache: putting them may evict a slot
        # this request hit.
        read = self._read(list(dict.fromkeys(item_id for item_id, m in zip(item_ids, missing.tolist()) if m)))
        features = self._features(item_ids, slots, read)
        cache.put(read)
        return features

    def _features(self, item_ids: list[str], slots: np.ndarray, read: dict) -> ItemFeatures:
        """The request's columns: cached rows from their ``slots``, the others (slot -1) from ``read``."""
        cache, n = self.cache, len(item_ids)
        embeddings = np.zeros((n, self.dimension), dtype=np.float32)
        known = np.zeros(n, dtype=bool)
        titles, texts = [""] * n, [""] * n
        for position, (item_id, slot) in enumerate(zip(item_ids, slots.tolist())):
            if slot >= 0:
                embeddings[position], known[position] = cache.embeddings[slot], cache.known[slot]
                titles[position], texts[position] = cache.titles[slot], cache.texts[slot]
            elif read[item_id] is not None:
                embeddings[position], titles[position], texts[position] = read[item_id]
                known[position] = True
        return ItemFeatures(embeddings, titles, texts, known)
