"""The student's item features in Feast: computed offline, written to the offline store, materialized to the
online store, and read back by training (historical) and serving (online), both through the one FeatureService
the definitions declare (``student_item_features``).

The definitions live in the Feast repo folder (feature_repo/: feature_store.yaml + definitions.py, definitions
only; shipped in the wheel as relevance/feature_repo). :func:`build_feature_repo` copies them next to the parquet
files it writes, so a run's store is self-contained (`feast -c <run>/feature_repo plan` works on it) and the
folder in git never holds data.

Versions: a built repo's Feast project is ``<project>_<12 hex>``, a hash of its feature tables and definitions
(:func:`content_version`). Feast keys every online row by project (Redis: entity key + project; SQLite: one
table per project and view), so a materialization of new content never touches the keys of the version being
served, and one retried with the same content resumes into the same keys. Feast's registry records a view's
materialization interval only once its rows are written: serving (relevance.platform.item_source) refuses a project
whose views have none, so a materialization killed midway is never served. The record lives in the registry
(a SQL database shared by the pipeline and the transformers in a cluster), not next to the repo, so a
transformer started from the definitions alone can check it; the serving bundle names the project its student
was exported against (bundle.json ``feature_project``) and the transformer reads that one.

Embedding versions: the item vectors are only meaningful to a student whose tower made them (a tuned tower,
relevance.student.towers, changes every vector; a separate query tower, relevance.student.query_tower, is trained
into its tower's space and leaves the item vectors, and their version, the tower's). A built repo records the encoder that embedded its catalog
(``embedding.json``: the encoder's ``encoder_fingerprint``, the name students, bundles and MLflow lineage use), it
enters the content version, and :func:`apply_and_materialize` tags the registry's ``item_embeddings`` view with it.
A transformer refuses, at start, a project whose tag is not its bundle's (:class:`EmbeddingVersionMismatch`), so a
canary whose challenger has a new tower reads its own project beside the champion's.

Feast is imported lazily (it takes seconds): only the steps that touch the store pay for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from relevance.common.console import log
from relevance.common.files import atomic_write, atomic_write_json
from relevance.config import RunConfig
from relevance.data.schema import DataContractError, Dataset

# The feature service the student reads, and the views it is made of (each must exist in the definitions).
STUDENT_FEATURES = "student_item_features"
ITEM_EMBEDDINGS, ITEM_TEXT = "item_embeddings", "item_text"
FEATURE_VIEWS = (ITEM_EMBEDDINGS, ITEM_TEXT)
DEFINITION_FILES = ("feature_store.yaml", "*.py")
# The environment variable Feast reads a feature_store.yaml's path from, instead of <repo>/feature_store.yaml.
FEAST_YAML_ENV = "FEAST_FS_YAML_FILE_PATH"
# The registry tag on the item_embeddings view naming the encoder that embedded the catalog (a student's, a
# bundle's and a model version's ``encoder_fingerprint``), and the built repo's file it is applied from.
ENCODER_TAG = "encoder_fingerprint"
EMBEDDING_FILE = "embedding.json"
_PROJECT_LINE = re.compile(r"^project:[ \t]*[\"']?([A-Za-z0-9_]+)[\"']?[ \t]*(#.*)?$", re.MULTILINE)

# Serving reads the online store inside a request, on the server's event loop: when Redis does not answer, the
# request must fail within about a second (a 503 the caller retries), not wait on redis-py's defaults (no socket
# timeout, and 3 retries with exponential backoff: 10 s per request on a refused connection, measured). Feast
# passes a connection string's key=value options to redis-py in the order given, so these come first and any
# the connection string sets itself win. retry=null is redis-py's retry=None: no retries. A pooled connection
# that went stale (Redis restarted) is still replaced when it is checked out, so no retry is needed for that.
SERVING_REDIS_OPTIONS = {
    "redis": "socket_connect_timeout=1,socket_timeout=1,retry=null",
    "redis_sentinel": "socket_connect_timeout=1,socket_timeout=1,retry=null",
    # RedisCluster refuses a retry in its connection options; its own retries are cluster_error_retry_attempts.
    "redis_cluster": "socket_connect_timeout=1,socket_timeout=1,cluster_error_retry_attempts=0",
}


class EmbeddingVersionMismatch(ValueError):
    """A Feast project whose item embeddings were made by another encoder than the student's query tower."""


class IncompleteMaterialization(ValueError):
    """A feature project whose materialization did not finish (or was never run): serving it could read a
    half-written version."""


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
    stamp = pd.Timestamp(timestamp or datetime.now(UTC))
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


def content_version(tables: dict[str, pd.DataFrame], definitions: list[Path], encoder_fingerprint: str) -> str:
    """12 hex digits that change with any feature value, item, definition or embedding encoder, and with nothing
    else. The event timestamps are left out, so a retried materialization of the same content (stamped later) gets
    the same version and resumes into the same online keys; and the store's settings too, so the same features in
    SQLite and in Redis are one version (the one a serving bundle names)."""
    digest = hashlib.sha256(f"encoder\0{encoder_fingerprint}\0".encode())
    for path in definitions:
        if path.suffix == ".py":
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for name in FEATURE_VIEWS:
        frame = tables[name].sort_values("item_id", kind="stable")
        digest.update(f"\0view {name}\0".encode())
        for column in sorted(c for c in frame.columns if c != "event_timestamp"):
            values = frame[column]
            digest.update(f"\0{column}\0".encode())
            if values.map(lambda v: isinstance(v, (np.ndarray, list))).any():
                digest.update(np.stack([np.asarray(v, dtype=np.float32) for v in values]).tobytes())
            else:
                digest.update("\0".join(map(str, values)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:12]


def _config_source(definitions: Path) -> Path:
    """The feature_store.yaml a build copies: the one Feast would read for the definitions, i.e. the file
    $FEAST_FS_YAML_FILE_PATH names when it is set (the production config in a pod), else the definitions' own."""
    named = os.environ.get(FEAST_YAML_ENV)
    if not named:
        return definitions / "feature_store.yaml"
    if not Path(named).is_file():
        raise FileNotFoundError(f"${FEAST_YAML_ENV} names {named}, which is not a file")
    return Path(named)


def shared_local_store(root: str | Path) -> Path:
    """A feature_store.yaml (its path) whose registry and online store are SQLite files under ``root``, which every
    repo built with it names in $FEAST_FS_YAML_FILE_PATH shares, as a cluster's SQL registry and Redis are: two
    item towers' versions side by side on one machine (a local canary whose challenger has a new tower)."""
    import yaml

    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    path = root / "shared-feature-store.yaml"
    path.write_text(yaml.safe_dump({
        "project": "relevance", "provider": "local", "registry": str(root / "registry.db"),
        "online_store": {"type": "sqlite", "path": str(root / "online.db")}, "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3}))
    return path


def build_feature_repo(definitions: str | Path, out_dir: str | Path, tables: dict[str, pd.DataFrame],
                       encoder_fingerprint: str) -> Path:
    """Copy the definitions to ``out_dir`` and write each view's parquet to ``out_dir/data/<view>.parquet``, and
    ``encoder_fingerprint`` (the encoder that embedded the items) to ``out_dir/embedding.json``.

    The copy's feature_store.yaml is the config in effect (see :func:`_config_source`) with its ``project:`` line
    versioned (``<project>_<content version>``; every other line, comments included, as it was), so the built repo
    carries its own config: :func:`open_store` reads it and nothing else."""
    definitions, out_dir = Path(definitions), Path(out_dir)
    missing = [name for name in FEATURE_VIEWS if name not in tables]
    if missing:
        raise ValueError(f"feature tables missing for view(s) {missing}")
    paths = _definition_paths(definitions)
    source = _config_source(definitions)
    text = source.read_text()
    match = _PROJECT_LINE.search(text)
    if match is None:
        raise ValueError(f"{source}: no top-level `project: <name>` line to version")
    if not isinstance(encoder_fingerprint, str) or not re.fullmatch(r"[0-9a-f]{8,64}", encoder_fingerprint):
        raise ValueError(f"encoder_fingerprint: expected the encoder's hex fingerprint (BiEncoder.fingerprint), got "
                         f"{encoder_fingerprint!r}")
    project = f"{match.group(1)}_{content_version(tables, paths, encoder_fingerprint)}"
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.name != "feature_store.yaml":
            shutil.copy2(path, out_dir / path.name)
    with atomic_write(out_dir / "feature_store.yaml") as tmp:
        tmp.write_text(text[:match.start(1)] + project + text[match.end(1):])
    for name, frame in tables.items():
        with atomic_write(out_dir / "data" / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    atomic_write_json(out_dir / EMBEDDING_FILE, {ENCODER_TAG: encoder_fingerprint})
    return out_dir


def built_encoder(repo: Path) -> str:
    """The encoder fingerprint a built repo's item embeddings were made with (its embedding.json)."""
    path = Path(repo) / EMBEDDING_FILE
    try:
        return str(json.loads(path.read_text())[ENCODER_TAG])
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{repo}: no readable {EMBEDDING_FILE} naming the encoder of its item embeddings "
                         f"({type(error).__name__}): built before embedding versions were recorded. Build it again "
                         "(`relevance features`, or the pipeline's compute_features step without its cached "
                         "result)") from None


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


def _unset_variables(path: Path) -> list[str]:
    """The ${NAME}s a feature_store.yaml's settings name (comments aside) that the environment does not set:
    Feast would keep them as literal text and fail later, far from the cause."""
    import yaml

    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    names = set()
    for value in strings(yaml.safe_load(path.read_text())):
        for braced, bare in re.findall(r"\$\{(\w+)\}|\$(\w+)", value):  # Feast expands both forms
            names.add(braced or bare)
    return sorted(name for name in names if name not in os.environ)


def repo_project(repo: str | Path) -> str:
    """The Feast project ``repo``/feature_store.yaml names (a built repo's is versioned), read without Feast."""
    path = Path(repo) / "feature_store.yaml"
    match = _PROJECT_LINE.search(path.read_text()) if path.exists() else None
    if match is None:
        raise FileNotFoundError(f"{repo}: not a Feast repo (no feature_store.yaml with a `project:` line)")
    return match.group(1)


def open_store(repo: str | Path, serving: bool = False, project: str | None = None):
    """The Feast store of the repo at ``repo``, configured by ``repo``/feature_store.yaml alone (a built repo's
    versioned project is there; $FEAST_FS_YAML_FILE_PATH was read when it was built). ``serving``: bound every
    wait on a Redis online store (:data:`SERVING_REDIS_OPTIONS`). ``project``: read this Feast project instead
    of the file's (a serving bundle's). With ``project`` or ``serving``, the store's config is the one Feast itself would read,
    $FEAST_FS_YAML_FILE_PATH when it is set: a transformer in a cluster starts from the image's definitions
    (feature_store.yaml there is the local SQLite one) with the production config named by that variable, and
    the bundle's project."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    repo = Path(repo)
    path = repo / "feature_store.yaml"
    if (project or serving) and os.environ.get(FEAST_YAML_ENV):
        path = Path(os.environ[FEAST_YAML_ENV])
    if not path.exists():
        raise FileNotFoundError(f"{repo}: not a Feast repo (no {path})")
    unset = _unset_variables(path)
    if unset:
        raise ValueError(f"{path} reads the environment variable(s) {unset}, which are not set (the production "
                         "config needs FEAST_REGISTRY_URL, a SQLAlchemy URL, and REDIS_CONNECTION, host:port)")
    config = load_repo_config(repo, path)
    if project:
        config.project = project
    online = config.online_store
    if serving and online.type == "redis":
        online.connection_string = f"{SERVING_REDIS_OPTIONS[online.redis_type.value]},{online.connection_string}"
    return FeatureStore(repo_path=str(repo), config=config)


def apply_and_materialize(repo: str | Path, end: datetime | None = None) -> dict[str, str]:
    """`feast apply` then materialize every view up to ``end``; returns {view: version tag} plus the
    ``encoder_fingerprint`` of the item embeddings, for lineage.

    Feast records each view's interval in its registry once the view's rows are written: a materialization
    killed before that leaves the project unrecorded, and serving refuses it (:func:`require_materialized`).
    Rerunning this on the same build resumes into the same project and keys."""
    from feast import FeatureView

    repo = Path(repo)
    encoder = built_encoder(repo)
    objects = _definitions(repo)
    for view in objects:  # the vectors' version, where serving checks it: the registry (shared in a cluster)
        if isinstance(view, FeatureView) and view.name == ITEM_EMBEDDINGS:
            view.tags = {**view.tags, ENCODER_TAG: encoder}
    store = open_store(repo)
    store.apply(objects)
    end = end or datetime.now(UTC)
    store.materialize(start_date=datetime(1970, 1, 1, tzinfo=UTC), end_date=end)
    return {**{view.name: view.tags.get("version", "0") for view in store.list_feature_views()},
            ENCODER_TAG: encoder}


def require_same_encoder(made_by: str | None, reads: str, what: str) -> None:
    """Refuse item embeddings (``what``'s) made by another encoder than ``reads``, the student's: cosine
    similarities between its query vectors and them are meaningless. The one check (and message) of serving, the
    pipeline's steps, the registry and the export."""
    if made_by == reads:
        return
    raise EmbeddingVersionMismatch(
        f"{what}: its item embeddings "
        + (f"were made by encoder {made_by}" if made_by else
           "record no encoder (materialized before embedding versions were recorded)")
        + f", but the student's item tower is encoder {reads}. Materialize the student's features (`relevance "
        "features` with its student.encoder, or the pipeline's compute_features step, without a cached result "
        "from before) and export its bundle against them")


def require_encoder(store, encoder_fingerprint: str) -> None:
    """Refuse a Feast project (``store``'s) whose item_embeddings view is not tagged with ``encoder_fingerprint``."""
    require_same_encoder(store.get_feature_view(ITEM_EMBEDDINGS).tags.get(ENCODER_TAG), encoder_fingerprint,
                         f"Feast project {store.config.project!r}")


def require_materialized(store) -> None:
    """Refuse a Feast project (``store``'s) whose student views were never completely materialized: Feast's
    registry has no materialization interval for them."""
    from feast.errors import FeatureViewNotFoundException

    project = store.config.project
    for name in FEATURE_VIEWS:
        try:
            intervals = store.get_feature_view(name).materialization_intervals
        except FeatureViewNotFoundException:
            intervals = None
        if not intervals:
            raise IncompleteMaterialization(
                f"Feast project {project!r}: feature view {name!r} was "
                f"{'never applied' if intervals is None else 'not materialized to the end'} (Feast's registry "
                "records no materialization of it); serving it could read a half-written version. Serve a project "
                "that `relevance features` (or the pipeline's compute_features step) materialized, or rerun it "
                "to complete this one")


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
    entity_df = pd.DataFrame({"item_id": unique, "event_timestamp": pd.Timestamp(at or datetime.now(UTC))})
    frame = store.get_historical_features(entity_df=entity_df, features=student_features(store)).to_df()
    frame = frame.drop_duplicates("item_id").set_index("item_id")
    absent = frame[frame["embedding"].isna()].index.tolist() + [i for i in unique if i not in frame.index]
    if absent:
        raise DataContractError(f"{repo}: the feature store has no {ITEM_EMBEDDINGS} for {len(absent)} item(s), "
                                f"e.g. {absent[:5]}; rerun the features step on this catalog")
    frame["embedding"] = frame["embedding"].map(lambda v: np.asarray(v, dtype=np.float32))
    frame[["title", "lexical_text"]] = frame[["title", "lexical_text"]].fillna("")
    return frame.loc[unique, ["embedding", "title", "lexical_text"]]


def materialize_features(config: RunConfig, dataset: Dataset, repo_dir: str | Path,
                         embeddings_dir: str | Path | None = None) -> dict[str, str]:
    """Compute the student's item features, write them as the Feast offline store next to a copy of the
    definitions, apply and materialize online. Returns {view: version} plus the definitions' hash, the project
    and the encoder fingerprint of the item embeddings.
    ``embeddings_dir``: an embedding cache to reuse (a pipeline step starts from none)."""
    from relevance.student.featurizer import build_featurizer, featurizer_settings

    definitions = definitions_dir(config.features.repo)
    with tempfile.TemporaryDirectory() as cache_dir:
        featurizer = build_featurizer(dataset.items, featurizer_settings(config), Path(embeddings_dir or cache_dir))
        tables = feature_tables(dataset, featurizer.item_text,
                                lambda texts: featurizer.cache.embed(texts, "item embeddings"))
        encoder = featurizer.cache.encoder.fingerprint
    build_feature_repo(definitions, repo_dir, tables, encoder)
    versions = apply_and_materialize(repo_dir)
    project = repo_project(repo_dir)
    log(f"features: {len(tables[ITEM_EMBEDDINGS])} items materialized → {repo_dir} (Feast project {project})")
    # project: the feature version (the content hash) a model trained and served on these features records
    return {**versions, "definitions": definitions_version(definitions), "project": project}
