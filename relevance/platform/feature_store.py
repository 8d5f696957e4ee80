"""The student's item features in Feast: computed offline, written to the offline store, materialized to the
online store, and read back by training (historical) and serving (online), both through the one FeatureService
the definitions declare (``student_item_features``).

The definitions live in the Feast repo folder (feature_repo/: feature_store.yaml + definitions.py, definitions
only; shipped in the wheel as relevance/feature_repo). :func:`build_feature_repo` copies them next to the parquet
files it writes, so a run's store is self-contained (`feast -c <run>/feature_repo plan` works on it) and the
folder in git never holds data.

Feast is imported lazily (it takes seconds): only the steps that touch the store pay for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from relevance.common.console import log
from relevance.common.files import atomic_write
from relevance.config import RunConfig
from relevance.data.schema import DataContractError, Dataset
from relevance.student.scoring import ItemFeatures, lookup_cache

# The feature service the student reads, and the views it is made of (each must exist in the definitions).
STUDENT_FEATURES = "student_item_features"
ITEM_EMBEDDINGS, ITEM_TEXT = "item_embeddings", "item_text"
FEATURE_VIEWS = (ITEM_EMBEDDINGS, ITEM_TEXT)
DEFINITION_FILES = ("feature_store.yaml", "*.py")


def definitions_dir(repo: str | Path | None) -> Path:
    """The Feast definitions to use: ``features.repo`` when set, else the ones shipped with the package."""
    from relevance.common.resources import packaged

    return Path(repo) if repo else packaged("feature_repo")


def feature_tables(dataset: Dataset, item_text: pd.Series, embed: Callable[[list[str]], np.ndarray],
                   timestamp: datetime | None = None) -> dict[str, pd.DataFrame]:
    """One parquet-ready frame per feature view, keyed by item id and stamped with ``timestamp``.

    ``item_text`` is the assembled lexical text per item id (relevance.models.bm25.lexical_item_texts), and ``embed``
    the student's bi-encoder (through its cache): the same inputs the offline featurizer uses.
    """
    stamp = pd.Timestamp(timestamp or datetime.now(timezone.utc))
    items = dataset.items.set_index("item_id")
    ids = items.index.tolist()
    texts = item_text.reindex(ids).fillna("")
    titles = items["title"].fillna("").astype(str) if "title" in items.columns else texts
    vectors = embed(texts.tolist())
    return {
        ITEM_EMBEDDINGS: pd.DataFrame({"item_id": ids, "embedding": list(vectors.astype(np.float32)),
                                       "event_timestamp": stamp}),
        ITEM_TEXT: pd.DataFrame({"item_id": ids, "title": titles.tolist(), "lexical_text": texts.tolist(),
                                 "event_timestamp": stamp}),
    }


def _definition_paths(definitions: Path) -> list[Path]:
    paths = sorted(p for pattern in DEFINITION_FILES for p in definitions.glob(pattern))
    if not (definitions / "feature_store.yaml").exists():
        raise FileNotFoundError(f"{definitions}: not a Feast repo (no feature_store.yaml)")
    return paths


def definitions_version(definitions: str | Path) -> str:
    """A short hash of the repo's definition files: the lineage tag a model records."""
    digest = hashlib.sha256()
    for path in _definition_paths(Path(definitions)):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def build_feature_repo(definitions: str | Path, out_dir: str | Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Copy the definitions to ``out_dir`` and write each view's parquet to ``out_dir/data/<view>.parquet``."""
    definitions, out_dir = Path(definitions), Path(out_dir)
    missing = [name for name in FEATURE_VIEWS if name not in tables]
    if missing:
        raise ValueError(f"feature tables missing for view(s) {missing}")
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    for path in _definition_paths(definitions):
        shutil.copy2(path, out_dir / path.name)
    for name, frame in tables.items():
        with atomic_write(out_dir / "data" / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    return out_dir


def _definitions(repo: Path) -> list:
    """The Entity, FeatureView and FeatureService objects defined in the repo's .py files.

    Loaded by file path (what `feast apply` does after a chdir), so the process's working directory is untouched.
    """
    from feast import Entity, FeatureService, FeatureView

    objects = []
    for path in sorted(repo.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"feature_repo_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        objects += [value for value in vars(module).values()
                    if isinstance(value, (Entity, FeatureView, FeatureService))]
    names = {o.name for o in objects if isinstance(o, (FeatureView, FeatureService))}
    missing = [name for name in (*FEATURE_VIEWS, STUDENT_FEATURES) if name not in names]
    if missing:
        raise DataContractError(f"{repo}: the feature repo defines no {missing}; the student reads the feature "
                                f"service {STUDENT_FEATURES!r} over the views {list(FEATURE_VIEWS)}")
    return objects


def open_store(repo: str | Path):
    from feast import FeatureStore

    repo = Path(repo)
    if not (repo / "feature_store.yaml").exists():
        raise FileNotFoundError(f"{repo}: not a Feast repo (no feature_store.yaml)")
    return FeatureStore(repo_path=str(repo))


def apply_and_materialize(repo: str | Path, end: datetime | None = None) -> dict[str, str]:
    """`feast apply` then materialize every view up to ``end``; returns {view: version tag} for lineage."""
    objects = _definitions(Path(repo))
    store = open_store(repo)
    store.apply(objects)
    end = end or datetime.now(timezone.utc)
    store.materialize(start_date=datetime(1970, 1, 1, tzinfo=timezone.utc), end_date=end)
    return {view.name: view.tags.get("version", "0") for view in store.list_feature_views()}


def student_features(store):
    """The FeatureService that names every item feature the student reads."""
    return store.get_feature_service(STUDENT_FEATURES)


def item_features_from_store(repo: str | Path, item_ids: list[str], at: datetime | None = None) -> pd.DataFrame:
    """Point-in-time item features from the offline store (get_historical_features over the student's feature
    service), indexed by item id: ``embedding`` (float32 arrays), ``title``, ``lexical_text``.

    Training reads its items this way, so it sees exactly what was materialized for serving.
    """
    store = open_store(repo)
    unique = list(dict.fromkeys(item_ids))
    entity_df = pd.DataFrame({"item_id": unique, "event_timestamp": pd.Timestamp(at or datetime.now(timezone.utc))})
    frame = store.get_historical_features(entity_df=entity_df, features=student_features(store)).to_df()
    frame = frame.drop_duplicates("item_id").set_index("item_id")
    absent = frame[frame["embedding"].isna()].index.tolist() + [i for i in unique if i not in frame.index]
    if absent:
        raise DataContractError(f"{repo}: the feature store has no {ITEM_EMBEDDINGS} for {len(absent)} item(s), "
                                f"e.g. {absent[:5]}; rerun the features step on this catalog")
    frame["embedding"] = frame["embedding"].map(lambda v: np.asarray(v, dtype=np.float32))
    frame[["title", "lexical_text"]] = frame[["title", "lexical_text"]].fillna("")
    return frame.loc[unique, ["embedding", "title", "lexical_text"]]


def online_item_features(store, item_ids: list[str]) -> dict[str, list]:
    """The online store's student features for ``item_ids`` (None where an item is unknown), as Feast returns
    them: {"item_id", "embedding", "title", "lexical_text"} → one list each."""
    return store.get_online_features(features=student_features(store),
                                     entity_rows=[{"item_id": item_id} for item_id in item_ids]).to_dict()


def materialize_features(config: RunConfig, dataset: Dataset, repo_dir: str | Path,
                         embeddings_dir: str | Path | None = None) -> dict[str, str]:
    """Compute the student's item features, write them as the Feast offline store next to a copy of the
    definitions, apply and materialize online. Returns {view: version} plus the definitions' hash.
    ``embeddings_dir``: an embedding cache to reuse (a pipeline step starts from none)."""
    from relevance.student.featurizer import build_featurizer, featurizer_settings

    definitions = definitions_dir(config.features.repo)
    with tempfile.TemporaryDirectory() as cache_dir:
        featurizer = build_featurizer(dataset.items, featurizer_settings(config), Path(embeddings_dir or cache_dir))
        tables = feature_tables(dataset, featurizer.item_text,
                                lambda texts: featurizer.cache.embed(texts, "item embeddings"))
    build_feature_repo(definitions, repo_dir, tables)
    versions = apply_and_materialize(repo_dir)
    log(f"features: {len(tables[ITEM_EMBEDDINGS])} items materialized → {repo_dir}")
    return {**versions, "definitions": definitions_version(definitions)}


class FeastItemSource:
    """Candidate features from the Feast online store, with a TTL cache in front (theine).

    The store is read once per request for the ids the cache lacks; values live ``ttl_seconds``, so a
    materialization is visible within that time. Unknown ids are cached too: a burst of them must not hammer
    the store.
    """

    def __init__(self, repo: str | Path, dimension: int, cache_size: int = 200_000, ttl_seconds: float = 300.0):

        self.store = open_store(repo)
        self.dimension = dimension
        self.ttl = timedelta(seconds=ttl_seconds)
        self.cache = lookup_cache(cache_size)
        self.reads = 0

    def _read(self, item_ids: list[str]) -> dict[str, tuple[np.ndarray, str, str] | None]:
        self.reads += 1
        rows = online_item_features(self.store, item_ids)
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
        values: dict[str, tuple[np.ndarray, str, str] | None] = {}
        missing = []
        for item_id in item_ids:
            value, hit = self.cache.get(item_id) if self.cache is not None else (None, False)
            if hit:
                values[item_id] = value
            else:
                missing.append(item_id)
        if missing:
            for item_id, value in self._read(missing).items():
                values[item_id] = value
                if self.cache is not None:
                    self.cache.set(item_id, value, self.ttl)
        embeddings = np.zeros((len(item_ids), self.dimension), dtype=np.float32)
        titles, texts, known = [], [], np.zeros(len(item_ids), dtype=bool)
        for row, item_id in enumerate(item_ids):
            value = values[item_id]
            if value is None:
                titles.append("")
                texts.append("")
                continue
            embeddings[row], title, text = value
            titles.append(title)
            texts.append(text)
            known[row] = True
        return ItemFeatures(embeddings, titles, texts, known)
