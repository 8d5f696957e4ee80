"""Sharded, resumable soft labelling of the unlabelled pool by the teacher.

The pool parquet is cut into fixed shards of ``shard_rows`` rows (shard i = rows [i·S, (i+1)·S)), so a shard
index means the same rows on every run and on every worker of a fan-out. Each shard is written to
``shard-{i:05d}.parquet`` through a temporary file and an atomic rename: a shard file either holds every row of
its shard or does not exist. A rerun skips shards that exist for the same teacher version, so a killed job
resumes with no row lost and none duplicated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from relevance.config import PoolLabellingConfig
from relevance.data.schema import Dataset, DataContractError, prob_columns, validate_teacher_labels
from relevance.common.files import atomic_write, atomic_write_json, sha256_of_files
from relevance.common.runtime import progress_bar, set_threads
from relevance.teacher.model import Teacher
from relevance.teacher.model import score_items

SHARD_PATTERN = "shard-{:05d}.parquet"


def num_shards(pool_path: str | Path, shard_rows: int) -> int:
    return math.ceil(pq.ParquetFile(pool_path).metadata.num_rows / shard_rows)


def read_shard(pool_path: str | Path, shard_index: int, shard_rows: int) -> pd.DataFrame:
    """Rows [i·S, (i+1)·S) of the pool, reading only the row groups that overlap them."""
    parquet = pq.ParquetFile(pool_path)
    start, stop = shard_index * shard_rows, (shard_index + 1) * shard_rows
    total = parquet.metadata.num_rows
    if shard_index < 0 or start >= max(total, 1):
        raise ValueError(f"shard {shard_index} is out of range: the pool has {total} rows, "
                         f"{math.ceil(total / shard_rows)} shard(s) of {shard_rows}")
    pieces, offset = [], 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset + rows > start and offset < stop:
            table = parquet.read_row_group(group, columns=["query_id", "item_id"])
            pieces.append(table.slice(max(0, start - offset), min(stop, offset + rows) - max(start, offset)))
        offset += rows
    return pa.concat_tables(pieces).to_pandas()


def pool_fingerprint(pool_path: str | Path) -> str:
    """Identity of a pool file: its content hash. Shards record it, so a rebuilt pool never reuses old shards."""
    return sha256_of_files([Path(pool_path)])[:16]


def _shard_metadata(path: Path) -> dict[str, str]:
    metadata = pq.ParquetFile(path).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in metadata.items() if not k.startswith(b"pandas")}


def _shard_is_done(path: Path, teacher_version: str, pool: str, shard_rows: int) -> bool:
    """True when ``path`` holds this shard of this pool, cut the same way, labelled by this teacher."""
    if not path.exists():
        return False
    metadata = _shard_metadata(path)
    if metadata.get("teacher_version") != teacher_version:
        raise DataContractError(
            f"{path} was labelled by {metadata.get('teacher_version') or 'an unknown teacher'}, not "
            f"{teacher_version}; write labels of a new teacher to a new directory so versions never mix")
    if metadata.get("pool") != pool or metadata.get("shard_rows") != str(shard_rows):
        raise DataContractError(
            f"{path} belongs to another pool or shard size (pool {metadata.get('pool')}, shard_rows "
            f"{metadata.get('shard_rows')}; now pool {pool}, shard_rows {shard_rows}); label into a new directory")
    return True


def label_shard(teacher: Teacher, pool_path: str | Path, shard_index: int, shard_rows: int,
                query_text: pd.Series, item_text: pd.Series, out_dir: str | Path, batch_size: int = 128,
                precision: str = "auto", on_batch=None, pool: str | None = None) -> Path:
    """Label one shard (idempotent: an existing complete shard of the same teacher is kept as is).

    ``pool`` is the pool's fingerprint, when the caller has it already (hashing the pool once per shard would
    make a many-shard run quadratic in the pool size)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SHARD_PATTERN.format(shard_index)
    pool = pool or pool_fingerprint(pool_path)
    if _shard_is_done(path, teacher.version, pool, shard_rows):
        return path
    shard = read_shard(pool_path, shard_index, shard_rows)
    missing_queries = ~shard["query_id"].isin(query_text.index)
    missing_items = ~shard["item_id"].isin(item_text.index)
    if missing_queries.any() or missing_items.any():
        raise DataContractError(f"pool shard {shard_index}: {int(missing_queries.sum())} unknown query id(s) and "
                                f"{int(missing_items.sum())} unknown item id(s)")
    probs = score_items(teacher, shard, query_text, item_text, batch_size, precision, on_batch)
    return write_label_shard(path, shard, probs, teacher.version, pool, shard_rows, shard_index)


def write_label_shard(path: Path, shard: pd.DataFrame, probs, teacher_version: str, pool: str, shard_rows: int,
                      shard_index: int) -> Path:
    """The one writer of the label shard format: the pairs, p_0..p_{K-1}, the teacher's version, and in the
    file's metadata which pool, shard size and shard it is (what resumption and read_labels check)."""
    labels = shard[["query_id", "item_id"]].copy()
    for column, values in zip(prob_columns(probs.shape[1]), probs.T):
        labels[column] = values
    labels["teacher_version"] = teacher_version
    table = pa.Table.from_pandas(labels, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"teacher_version": teacher_version.encode(),
                                           b"pool": pool.encode(), b"shard_rows": str(shard_rows).encode(),
                                           b"shard_index": str(shard_index).encode()})
    with atomic_write(path) as tmp:  # readers and resumers see the whole shard or nothing
        pq.write_table(table, tmp)
    return path


def label_pool(teacher_dir: str | Path, pool_path: str | Path, dataset: Dataset, out_dir: str | Path,
               config: PoolLabellingConfig, shards: list[int] | None = None) -> list[Path]:
    """Label every shard of the pool (or the given ones, e.g. one task of a fan-out), skipping shards already
    done. ``dataset`` gives the query and item texts."""
    set_threads()
    teacher = Teacher.load(teacher_dir)
    out_dir = Path(out_dir)
    shard_rows = config.shard_rows
    total_rows = pq.ParquetFile(pool_path).metadata.num_rows
    if total_rows == 0:
        raise DataContractError(f"{pool_path}: the unlabelled pool is empty")
    count = math.ceil(total_rows / shard_rows)
    wanted = list(range(count)) if shards is None else shards
    invalid = [i for i in wanted if not 0 <= i < count]
    if invalid:
        raise ValueError(f"shard index(es) {invalid} out of range: the pool has {count} shard(s) of {shard_rows} rows")
    item_text = teacher.item_texts(dataset.items)
    pool = pool_fingerprint(pool_path)
    if shards is None:  # a whole-pool run owns the directory: temporary files left by killed writers go
        for leftover in out_dir.glob(".shard-*.tmp"):
            leftover.unlink()
    done = [i for i in wanted if _shard_is_done(out_dir / SHARD_PATTERN.format(i), teacher.version, pool, shard_rows)]
    todo_rows = sum(min(shard_rows, total_rows - i * shard_rows) for i in wanted if i not in done)
    paths = []
    with progress_bar() as bar:
        task = bar.add_task(f"labelling {len(wanted) - len(done)} shard(s), {len(done)} already done",
                            total=todo_rows)
        for shard_index in wanted:
            paths.append(label_shard(teacher, pool_path, shard_index, shard_rows, dataset.query_text, item_text,
                                     out_dir, config.batch_size, config.precision,
                                     on_batch=lambda n: bar.update(task, advance=n), pool=pool))
    atomic_write_json(out_dir / "labels.json", {
        "teacher_version": teacher.version, "num_grades": teacher.num_grades, "pool": pool,
        "shard_rows": shard_rows, "num_shards": count, "rows": total_rows,
        "shards_done": sorted(int(p.stem.split("-")[1]) for p in out_dir.glob("shard-*.parquet"))})
    return paths


def label_chunks(label_dirs: str | Path | list[str | Path], num_grades: int | None = None,
                 pool_path: str | Path | None = None) -> list[tuple[str, Callable[[], pd.DataFrame]]]:
    """The shards of one label directory, or of several (a labelling fan-out), as (source, load) chunks read one
    at a time: what out-of-core distillation consumes. ``load()`` checks its shard against the contract (K, sums,
    no duplicates); coverage and the single teacher are checked here from the shards' metadata alone.

    With ``pool_path``, the shards must cover that pool exactly: a partial labelling (one --shard run, or a
    killed job) is refused rather than silently distilled from. ``source`` names the shard's file and content
    (pool, teacher, shard index), so a consumer can tell a shard it has already used.
    """
    dirs = [Path(d) for d in ([label_dirs] if isinstance(label_dirs, (str, Path)) else label_dirs)]
    paths = sorted((p for d in dirs for p in d.glob("shard-*.parquet")), key=lambda p: p.name)
    where = dirs[0] if len(dirs) == 1 else f"{len(dirs)} label directories"
    if not paths:
        raise DataContractError(f"{where}: no label shards; run `relevance label` first")
    names = [p.name for p in paths]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataContractError(f"{where}: shard(s) {repeated[:3]} appear in more than one directory")
    metadata = [_shard_metadata(p) for p in paths]
    versions = sorted({m.get("teacher_version", "") for m in metadata})
    if len(versions) != 1:
        raise DataContractError(f"{where}: shards from several teachers {versions}; expected one")
    if pool_path is not None:
        fingerprint = pool_fingerprint(pool_path)
        stale = [p.name for p, m in zip(paths, metadata) if m.get("pool") != fingerprint]
        pool_rows = pq.ParquetFile(pool_path).metadata.num_rows
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        if stale or rows != pool_rows:
            raise DataContractError(
                f"{where}: the shards hold {rows} labelled rows of a {pool_rows}-row pool"
                + (f", and {len(stale)} shard(s) belong to another pool (e.g. {stale[0]})" if stale else "")
                + "; run `relevance label` until every shard is done")

    def loader(path: Path):
        def load() -> pd.DataFrame:
            labels = pd.read_parquet(path)
            k = num_grades if num_grades is not None else sum(c.startswith("p_") for c in labels.columns)
            try:
                return validate_teacher_labels(labels, k)
            except DataContractError as error:
                raise DataContractError(f"{path}: {error}") from None
        return load

    return [(f"{p.name}:{m.get('pool')}:{m.get('teacher_version')}:{m.get('shard_rows')}", loader(p))
            for p, m in zip(paths, metadata)]


def read_labels(label_dirs: str | Path | list[str | Path], num_grades: int | None = None,
                pool_path: str | Path | None = None) -> pd.DataFrame:
    """Every shard of :func:`label_chunks` as one table in memory, checked against the contract (K, sums, no
    duplicates across shards, one teacher). For what fits in memory (the GBDTs, the studies); distillation reads
    the chunks one at a time."""
    labels = pd.concat([load() for _, load in label_chunks(label_dirs, num_grades, pool_path)], ignore_index=True)
    k = num_grades if num_grades is not None else sum(c.startswith("p_") for c in labels.columns)
    return validate_teacher_labels(labels, k)
