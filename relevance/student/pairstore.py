"""Out-of-core distillation inputs: what the student trains on when the pool is far larger than memory.

A pair's student vector, [q, i, q⊙i, |q−i|, cosine, lexical] (relevance.student.featurizer.assemble), is 4·384 + 13 float32
values: 6.2 KB. At the seeds' 30M pairs that is 190 GB. Most of it repeats: a query's embedding appears once per
candidate, an item's once per query. So the store keeps per pair only what is per pair, and the rest once:

    tables/queries/  ids.parquet + vectors.npy   one embedding per query, memory-mapped (float16 or float32)
    tables/items/    ids.parquet + vectors.npy   one embedding per item
    pairs/pairs-{i:05d}.parquet                  per pair: query_row, item_row (int32 rows of the tables),
                                                 the lexical features, the soft label p_0..p_{K-1}, the human
                                                 grade (−1 where none): ~90 bytes
    pairs/store.json                             what the shards hold, once every shard is written

Each batch's vectors are assembled on the fly from a gather into the tables (:class:`StoreBatches`), so memory is
the tables' working set plus a shuffle window, whatever the pool size. Pair shards are written one per input chunk
(one per label shard) through an atomic rename and skipped when already written for the same source, so a killed
build resumes without losing or repeating a row.

A pool comes grouped by query (relevance.labels.pool buckets it by a hash of the query id, and labelling keeps
that order), so a shard holds a few dozen queries' candidates. A window of whole shards would then feed SGD a few
percent of the queries for thousands of steps, and the bigger the pool the smaller that share. So a shard's rows
are written shuffled, in row groups of PAIR_ROW_GROUP, and a window gathers row groups drawn from the whole pool:
the same memory, candidates of queries from every part of the pool. Which pairs share a row group is fixed at
build time; the rows of a window are shuffled again every epoch. A window then touches query-table rows all over
the table (where a window of shards in label order touched a few runs of rows), so the tables' mapped pages are
released every RELEASE_EVERY_BATCHES batches, not per window: at most that many batches' rows stay mapped,
whatever the pool's or the table's size.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from relevance.data.schema import DataContractError, prob_columns
from relevance.student.featurizer import LEXICAL_FEATURES, assemble
from relevance.common.files import atomic_directory, atomic_write, atomic_write_json

PAIR_SHARD = "pairs-{:05d}.parquet"
# Rows per row group of a pair shard: the unit a shuffle window draws from the pool (smaller mixes better; each
# group read costs a parquet page per column).
PAIR_ROW_GROUP = 2048
# Batches between two releases of the tables' mapped pages (a batch touches at most batch_size rows of each).
RELEASE_EVERY_BATCHES = 16
LEXICAL_COLUMNS = [f"x_{name}" for name in LEXICAL_FEATURES[1:]]  # cosine is computed from the embeddings


def pair_layout() -> str:
    """How pair shards are written, stored in each shard: a shard left by another layout (whole shards, rows in
    label order; other row groups) is rewritten rather than reused. A cache of students that must not be reused
    across layouts keys on it (the scaling study's does). Read at call time: PAIR_ROW_GROUP may be set (tests do)."""
    return f"shuffled-row-groups-{PAIR_ROW_GROUP}"


class EmbeddingTable:
    """Row-indexed embeddings on disk: ``ids.parquet`` (row order) and ``vectors.npy``, memory-mapped read-only.

    :meth:`release` drops the mapped pages from this process (they stay in the page cache), so a reader that
    moves through the pool window by window holds only the rows its window touches."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        meta_path = directory / "table.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory}: not an embedding table (no table.json)")
        self.directory = directory
        self.meta = json.loads(meta_path.read_text())
        self.ids = pd.Index(pq.read_table(directory / "ids.parquet").column("id").to_pandas())
        with open(directory / "vectors.npy", "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(handle)
            offset = handle.tell()
            self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        if shape != (len(self.ids), self.meta["dimension"]):
            raise DataContractError(f"{directory}: vectors.npy has shape {shape}, expected "
                                    f"({len(self.ids)}, {self.meta['dimension']})")
        self.vectors = np.frombuffer(self._mmap, dtype=dtype, count=shape[0] * shape[1], offset=offset).reshape(shape)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def rows(self, ids: Iterable[str], what: str = "id") -> np.ndarray:
        position = self.ids.get_indexer(pd.Index(ids))
        if (position < 0).any():
            unknown = pd.Index(ids)[position < 0]
            raise DataContractError(f"{len(unknown)} {what}(s) have no row in {self.directory}, e.g. "
                                    f"{list(unknown[:5])}")
        return position.astype(np.int32)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def release(self) -> None:
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED)

    @classmethod
    def build(cls, directory: str | Path, ids: list[str], texts_or_ids: list[str],
              embed: Callable[[list[str]], np.ndarray], source: str, dtype: str = "float16",
              chunk_rows: int = 50_000, on_rows=None) -> "EmbeddingTable":
        """Write a table of ``embed(chunk)`` for ``texts_or_ids`` in chunks (memory: one chunk), or reuse the one
        already at ``directory`` when it was built from the same ids, source (the encoder's fingerprint) and
        dtype. ``embed`` goes through the content-hash cache, so only texts never embedded are encoded."""
        directory = Path(directory)
        if len(ids) != len(texts_or_ids) or not len(ids):
            raise ValueError(f"an embedding table needs one text per id and at least one id, got {len(ids)} ids "
                             f"and {len(texts_or_ids)} texts")
        if len(set(ids)) != len(ids):
            raise DataContractError(f"{directory}: the table's ids repeat")
        digest = hashlib.sha256(f"{source}\x1f{dtype}\x1e".encode())
        for key, text in zip(ids, texts_or_ids):
            digest.update(f"{key}\x1f{text}\x1e".encode())
        fingerprint = digest.hexdigest()[:16]
        if (directory / "table.json").exists():
            table = cls(directory)
            if table.fingerprint == fingerprint:
                return table
        with atomic_directory(directory) as tmp:
            pq.write_table(pa.table({"id": pa.array(ids, pa.string())}), tmp / "ids.parquet")
            dimension = None
            with open(tmp / "vectors.npy", "wb") as out:
                # Written through a file, not a writable memory map: a map's dirty pages would count against this
                # process until flushed, so a 30M-pair pool's query table would sit in its memory.
                for start in range(0, len(ids), chunk_rows):
                    vectors = np.asarray(embed(list(texts_or_ids[start:start + chunk_rows])), dtype=np.dtype(dtype))
                    if dimension is None:
                        dimension = int(vectors.shape[1])
                        np.lib.format.write_array_header_1_0(out, {
                            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                            "shape": (len(ids), dimension)})
                    if vectors.shape != (min(chunk_rows, len(ids) - start), dimension):
                        raise ValueError(f"embedding chunk at row {start} has shape {vectors.shape}")
                    out.write(np.ascontiguousarray(vectors).tobytes())
                    if on_rows:
                        on_rows(len(vectors))
            atomic_write_json(tmp / "table.json", {"fingerprint": fingerprint, "source": source, "dtype": dtype,
                                                   "rows": len(ids), "dimension": dimension})
        return cls(directory)


def _row_groups(path: Path) -> list[int]:
    """The rows of each row group of a pair shard."""
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]


def _shard_metadata(path: Path) -> dict[str, str]:
    metadata = pq.ParquetFile(path).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in metadata.items() if not k.startswith(b"pandas")}


def build_pair_store(directory: str | Path, chunks: Iterable[tuple[str, Callable[[], pd.DataFrame]]],
                     lexical: Callable[[pd.DataFrame], np.ndarray], query_table: EmbeddingTable,
                     item_table: EmbeddingTable, num_grades: int, on_rows=None) -> Path:
    """Write one pair shard per chunk and then ``store.json``.

    ``chunks`` yields (source, load) pairs: ``source`` names the chunk's content (a label shard's file and
    fingerprint), ``load()`` returns its rows: query_id, item_id, p_0..p_{K-1}, and optionally grade (the judged
    train pairs). ``lexical(rows)`` gives their lexical features. A shard already written from the same source and
    tables is kept, so a rerun after a kill writes only what is missing."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tables = f"{query_table.fingerprint}/{item_table.fingerprint}"
    probs = prob_columns(num_grades)
    shards, rows, teacher_versions = [], 0, set()
    for index, (source, load) in enumerate(chunks):
        path = directory / PAIR_SHARD.format(index)
        if path.exists():
            metadata = _shard_metadata(path)
            if (metadata.get("source") == source and metadata.get("tables") == tables
                    and metadata.get("layout") == pair_layout()):
                shards.append({"file": path.name, "rows": int(metadata["rows"]), "source": source,
                               "row_groups": _row_groups(path)})
                rows += shards[-1]["rows"]
                teacher_versions.add(metadata.get("teacher_version", ""))
                if on_rows:
                    on_rows(shards[-1]["rows"])
                continue
        frame = load()
        missing = [c for c in ["query_id", "item_id", *probs] if c not in frame.columns]
        if missing:
            raise DataContractError(f"distillation chunk {source}: missing column(s) {missing}")
        # Shuffled in a fixed order (a function of the source), so a row group is a sample of the whole shard.
        seed = int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "little")
        frame = frame.iloc[np.random.default_rng(seed).permutation(len(frame))].reset_index(drop=True)
        p = frame[probs].to_numpy(np.float32)
        p /= p.sum(1, keepdims=True)
        columns = {"query_row": query_table.rows(frame["query_id"], "query id"),
                   "item_row": item_table.rows(frame["item_id"], "item id")}
        columns.update(zip(LEXICAL_COLUMNS, lexical(frame).T.astype(np.float32)))
        columns.update(zip(probs, p.T))
        columns["grade"] = (frame["grade"].to_numpy(np.int8) if "grade" in frame.columns
                            else np.full(len(frame), -1, np.int8))
        version = str(frame["teacher_version"].iloc[0]) if "teacher_version" in frame.columns and len(frame) else ""
        table = pa.table(columns).replace_schema_metadata({
            "source": source, "tables": tables, "rows": str(len(frame)), "teacher_version": version,
            "layout": pair_layout()})
        with atomic_write(path) as tmp:
            pq.write_table(table, tmp, row_group_size=PAIR_ROW_GROUP)
        shards.append({"file": path.name, "rows": len(frame), "source": source, "row_groups": _row_groups(path)})
        rows += len(frame)
        teacher_versions.add(version)
        if on_rows:
            on_rows(len(frame))
    for stale in sorted(directory.glob("pairs-*.parquet"))[len(shards):]:  # left by a larger earlier build
        stale.unlink()
    if not rows:
        raise DataContractError(f"{directory}: no pairs to distil from")
    atomic_write_json(directory / "store.json", {
        "rows": rows, "num_grades": num_grades, "shards": shards, "tables": tables,
        "lexical_columns": LEXICAL_COLUMNS, "teacher_versions": sorted(v for v in teacher_versions if v)})
    return directory


class StoreBatches:
    """Training batches from a pair store, assembled on the fly: (features [B, F], targets [B, K], grades [B]).

    Epoch e visits the store's row groups (of every shard) in a random order fixed by (seed, e), a window of about
    ``window_shards`` shards' rows at a time, rows shuffled within the window: a window mixes candidates of queries
    from the whole pool, whatever order the pool came in. The order is a function of (seed, epoch) alone, so
    :meth:`epoch` can start at any batch: a resumed run sees exactly the batches the killed one had not (none lost,
    none repeated)."""

    def __init__(self, directory: str | Path, query_table: EmbeddingTable, item_table: EmbeddingTable,
                 batch_size: int, seed: int = 0, window_shards: int = 8):
        self.directory = Path(directory)
        store_json = self.directory / "store.json"
        if not store_json.exists():
            raise DataContractError(f"{self.directory}: not a complete pair store (no store.json)")
        self.meta = json.loads(store_json.read_text())
        if self.meta["tables"] != f"{query_table.fingerprint}/{item_table.fingerprint}":
            raise DataContractError(f"{self.directory}: the pair store indexes other embedding tables")
        self.query_table, self.item_table = query_table, item_table
        self.batch_size, self.seed, self.window_shards = batch_size, seed, max(1, window_shards)
        self.num_grades = int(self.meta["num_grades"])
        # (shard, row group, rows) of the whole store (a store.json written before row groups: from the files).
        self.groups = [(s["file"], g, rows) for s in self.meta["shards"]
                       for g, rows in enumerate(s.get("row_groups") or _row_groups(self.directory / s["file"]))]
        shards = max(1, len(self.meta["shards"]))
        self.window_rows = self.window_shards * -(-int(self.meta["rows"]) // shards)

    def __len__(self) -> int:
        return int(self.meta["rows"])

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]

    def _windows(self, epoch: int) -> Iterator[tuple[list[tuple], np.random.Generator]]:
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        window, rows = [], 0
        for i in rng.permutation(len(self.groups)):
            window.append(self.groups[i])
            rows += self.groups[i][2]
            if rows >= self.window_rows:
                yield window, rng
                window, rows = [], 0
        if window:
            yield window, rng

    def num_batches(self, epoch: int) -> int:
        return sum(-(-sum(g[2] for g in window) // self.batch_size) for window, _ in self._windows(epoch))

    def read(self, groups: list[tuple]) -> pd.DataFrame:
        """The rows of ``groups`` ((shard file, row group, rows)), in that order."""
        files: dict[str, pq.ParquetFile] = {}
        tables = []
        try:
            for file, group, _ in groups:
                if file not in files:
                    files[file] = pq.ParquetFile(self.directory / file)
                tables.append(files[file].read_row_group(group))
        finally:
            for handle in files.values():
                handle.close()
        return pa.concat_tables(tables).to_pandas()

    def features(self, frame: pd.DataFrame) -> np.ndarray:
        """The student vectors of stored pairs: relevance.student.featurizer.assemble on gathered embeddings."""
        return assemble(self.query_table.gather(frame["query_row"].to_numpy()),
                        self.item_table.gather(frame["item_row"].to_numpy()),
                        frame[self.meta["lexical_columns"]].to_numpy(np.float32))

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        probs = prob_columns(self.num_grades)
        batch = 0
        for window, rng in self._windows(epoch):
            rows = sum(g[2] for g in window)
            permutation = rng.permutation(rows)  # drawn even for skipped windows: the order must not change
            count = -(-rows // self.batch_size)
            if batch + count <= start_batch:
                batch += count
                continue
            frame = self.read(window)
            for first in range(0, rows, self.batch_size):
                if batch >= start_batch:
                    part = frame.iloc[permutation[first:first + self.batch_size]]
                    yield (self.features(part), part[probs].to_numpy(np.float32), part["grade"].to_numpy(np.int64))
                    if batch % RELEASE_EVERY_BATCHES == RELEASE_EVERY_BATCHES - 1:
                        self.release()
                batch += 1
            del frame
            self.release()

    def release(self) -> None:
        """Drop the tables' mapped pages from this process (they stay in the page cache)."""
        self.query_table.release()
        self.item_table.release()

    def sample_features(self, rows: int = 100_000) -> Iterator[np.ndarray]:
        """Student vectors of up to ``rows`` pairs from row groups in a fixed random order, a group at a time:
        what an out-of-core student's standardisation statistics are computed on."""
        have = 0
        for window, _ in self._windows(1 << 20):  # an order no epoch uses
            for group in window:
                take = self.read([group]).iloc[:rows - have]  # a group's rows are a shuffled sample already
                have += len(take)
                for first in range(0, len(take), 8192):  # a vector is 6 KB: never a whole group's at once
                    yield self.features(take.iloc[first:first + 8192])
                self.release()
                if have >= rows:
                    return
