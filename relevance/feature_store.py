"""The student's item and query features in Feast: computed offline, written to the offline store, materialized
to the online store, and read back by training (historical) and serving (online).

The definitions live in the Feast repo folder (feature_repo/: feature_store.yaml + features.py, definitions only).
:func:`build_feature_repo` copies them next to the parquet files it writes, so a run's store is self-contained
(`feast -c <run>/feature_repo plan` works on it) and the folder in git never holds data.

Feast is imported lazily (it takes seconds): only the steps that touch the store pay for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from relevance.data.schema import Dataset, DataContractError
from relevance.text import tokenize_words

# The views the student is trained on and served with; each must exist in the repo's definitions.
ITEM_EMBEDDINGS = "item_embeddings"
ITEM_TEXT = "item_text"
ITEM_NUMERIC = "item_numeric"
QUERY_STATS = "query_stats"
FEATURE_VIEWS = (ITEM_EMBEDDINGS, ITEM_TEXT, ITEM_NUMERIC, QUERY_STATS)
DEFINITION_FILES = ("feature_store.yaml", "*.py")


def feature_tables(dataset: Dataset, item_text: pd.Series, embed: Callable[[list[str]], np.ndarray],
                   timestamp: datetime | None = None) -> dict[str, pd.DataFrame]:
    """One parquet-ready frame per feature view, keyed by its entity and stamped with ``timestamp``.

    ``item_text`` is the assembled lexical text per item id (relevance.candidates.lexical_item_texts), and
    ``embed`` the student's bi-encoder (through its cache): the same inputs the offline featurizer uses.
    """
    stamp = pd.Timestamp(timestamp or datetime.now(timezone.utc))
    items = dataset.items.set_index("item_id")
    ids = items.index.tolist()
    texts = item_text.reindex(ids).fillna("")
    titles = items["title"].fillna("").astype(str) if "title" in items.columns else texts
    vectors = embed(texts.tolist())
    impressions = (dataset.impressions["item_id"].value_counts() if dataset.impressions is not None
                   else pd.Series(dtype=np.int64))
    judged = dataset.judgments["item_id"].value_counts()
    query_impressions = (dataset.impressions["query_id"].value_counts() if dataset.impressions is not None
                         else pd.Series(dtype=np.int64))
    queries = dataset.queries
    return {
        ITEM_EMBEDDINGS: pd.DataFrame({"item_id": ids, "embedding": list(vectors.astype(np.float32)),
                                       "event_timestamp": stamp}),
        ITEM_TEXT: pd.DataFrame({
            "item_id": ids, "title": titles.tolist(), "lexical_text": texts.tolist(),
            "text_words": [len(tokenize_words(t)) for t in texts], "title_words": [len(tokenize_words(t)) for t in titles],
            "locale": items["locale"].astype(str).tolist(), "event_timestamp": stamp}),
        ITEM_NUMERIC: pd.DataFrame({
            "item_id": ids, "impressions": impressions.reindex(ids).fillna(0).astype(np.int64).to_numpy(),
            "judged": judged.reindex(ids).fillna(0).astype(np.int64).to_numpy(), "event_timestamp": stamp}),
        QUERY_STATS: pd.DataFrame({
            "query_id": queries["query_id"].tolist(),
            "query_words": [len(tokenize_words(q)) for q in queries["query"]],
            "impressions": query_impressions.reindex(queries["query_id"]).fillna(0).astype(np.int64).to_numpy(),
            "locale": queries["locale"].astype(str).tolist(), "event_timestamp": stamp}),
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
        tmp = out_dir / "data" / f".{name}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(out_dir / "data" / f"{name}.parquet")
    return out_dir


def _definitions(repo: Path) -> list:
    """The Entity and FeatureView objects defined in the repo's .py files.

    Loaded by file path (what `feast apply` does after a chdir), so the process's working directory is untouched.
    """
    from feast import Entity, FeatureView

    objects = []
    for path in sorted(repo.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"feature_repo_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        objects += [value for value in vars(module).values() if isinstance(value, (Entity, FeatureView))]
    views = {o.name for o in objects if isinstance(o, FeatureView)}
    missing = [name for name in FEATURE_VIEWS if name not in views]
    if missing:
        raise DataContractError(f"{repo}: the feature repo defines no view(s) {missing}; the student needs "
                                f"{list(FEATURE_VIEWS)}")
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


def item_embeddings_from_store(repo: str | Path, item_ids: list[str], at: datetime | None = None) -> pd.Series:
    """Point-in-time item embeddings from the offline store (Feast get_historical_features), by item id.

    Training reads its item vectors this way, so it sees exactly what was materialized for serving.
    """
    store = open_store(repo)
    unique = list(dict.fromkeys(item_ids))
    entity_df = pd.DataFrame({"item_id": unique,
                              "event_timestamp": pd.Timestamp(at or datetime.now(timezone.utc))})
    frame = store.get_historical_features(entity_df=entity_df,
                                          features=[f"{ITEM_EMBEDDINGS}:embedding"]).to_df()
    vectors = frame.set_index("item_id")["embedding"]
    absent = vectors[vectors.isna()].index.tolist() + [i for i in unique if i not in vectors.index]
    if absent:
        raise DataContractError(f"{repo}: the feature store has no {ITEM_EMBEDDINGS} for {len(absent)} item(s), "
                                f"e.g. {absent[:5]}; rerun the features step on this catalog")
    return vectors.map(lambda v: np.asarray(v, dtype=np.float32))


def online_item_features(repo: str | Path, item_ids: list[str]) -> dict[str, list]:
    """The online store's item features for ``item_ids`` (None where an item is unknown), as Feast returns them."""
    store = open_store(repo)
    return store.get_online_features(
        features=[f"{ITEM_EMBEDDINGS}:embedding", f"{ITEM_TEXT}:title", f"{ITEM_TEXT}:lexical_text",
                  f"{ITEM_NUMERIC}:impressions"],
        entity_rows=[{"item_id": item_id} for item_id in item_ids]).to_dict()
