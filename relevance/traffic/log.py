"""Captured traffic on disk: a write-ahead log that a killed writer loses nothing from, compacted into
partitioned parquet that readers see.

Layout of a traffic directory::

    _wal/segment-<start>-<writer>.jsonl            one checked record per line, flushed as it is appended
    date=YYYY-MM-DD/hour=HH/part-<segment>.parquet the segment's records of that hour, written atomically

Guarantees:

- **Nothing acknowledged is lost.** :meth:`TrafficLog.append` returns once the line is written and flushed to
  the operating system (``fsync=True`` also forces it to the disk, for a machine that may lose power). A writer
  killed at any point leaves its segment behind; the next writer on the directory compacts it.
- **At least once, then once.** Compacting a segment writes parts named after the segment and only then
  deletes it, so a compaction killed halfway is redone into the same files. A sender that retries (the payload
  logger) may deliver a record twice: :func:`read_traffic` keeps one row per (request_id, instance).
- **Bounded memory.** A writer holds one open file; compaction reads one segment of at most
  ``segment_records`` lines.
- **Live segments are left alone.** A writer holds an exclusive lock (flock) on its open segment, released by
  the kernel when it dies, so several writers may share a directory and each compacts only dead or closed
  segments. Readers see a record once its segment is compacted: within ``segment_seconds``.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from relevance.common.files import atomic_write
from relevance.traffic.records import KEY, SCHEMA, TrafficRecordError, traffic_record

WAL = "_wal"  # a leading underscore: pyarrow's dataset discovery skips it


class TrafficLog:
    """Append checked traffic records to ``directory`` (see the module docstring). Thread-safe.

    ``background``: compact in a daemon thread (a server: parquet writes stay off the request path); otherwise
    :meth:`append` rolls a full segment and :meth:`compact` / :meth:`close` are called by the owner."""

    def __init__(self, directory: str | Path, segment_records: int = 10_000, segment_seconds: float = 60.0,
                 fsync: bool = False, background: bool = False):
        if segment_records < 1 or segment_seconds <= 0:
            raise ValueError(f"segment_records must be >= 1 and segment_seconds > 0, got {segment_records} and "
                             f"{segment_seconds}")
        self.directory = Path(directory)
        self.wal = self.directory / WAL
        self.wal.mkdir(parents=True, exist_ok=True)
        self.segment_records, self.segment_seconds, self.fsync = segment_records, segment_seconds, fsync
        self.appended = 0
        self.compacted = 0  # records written to parquet by this writer
        self.rejected: Counter[str] = Counter()  # why records were skipped, and how many
        self.compaction_errors = 0  # background compactions that failed (the segments stay; retried)
        self.last_error = ""
        self._lock = threading.Lock()
        self._handle = None
        self._count = 0
        self._opened = 0.0
        self._stop = threading.Event()
        self.compact()  # what a killed writer left behind
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="traffic-compaction", daemon=True)
            self._thread.start()

    # -- writing ----------------------------------------------------------------------------------------------
    def append(self, record: dict) -> bool:
        """Check ``record`` and append it; False (counted in :attr:`rejected`) if it is not a record."""
        try:
            normal = traffic_record(record)
        except TrafficRecordError as error:
            self.rejected[str(error).split(":")[0]] += 1
            return False
        line = json.dumps({**normal, "time": normal["time"].isoformat()}, ensure_ascii=False,
                          separators=(",", ":")) + "\n"
        with self._lock:
            if self._handle is None:
                self._open()
            self._handle.write(line)
            self._handle.flush()
            if self.fsync:
                os.fsync(self._handle.fileno())
            self._count += 1
            self.appended += 1
            if self._count >= self.segment_records:
                self._close_segment()
        return True

    def _open(self) -> None:
        name = f"segment-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._handle = open(self.wal / name, "a", encoding="utf-8")
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
        self._count, self._opened = 0, time.monotonic()

    def _close_segment(self) -> None:
        if self._handle is not None:
            self._handle.close()  # releases the lock: the segment is now closed, for any writer to compact
            self._handle = None

    def roll(self) -> None:
        """Close the open segment (if any) so that the next :meth:`compact` makes it visible."""
        with self._lock:
            self._close_segment()

    # -- compaction -----------------------------------------------------------------------------------------
    def compact(self) -> int:
        """Compact every closed (or abandoned) segment into parquet; the number of records written."""
        written = 0
        for segment in sorted(self.wal.glob("segment-*.jsonl")):
            written += self._compact(segment)
        self.compacted += written
        return written

    def _compact(self, segment: Path) -> int:
        try:
            handle = open(segment, encoding="utf-8", errors="replace")
        except FileNotFoundError:  # another writer compacted it meanwhile
            return 0
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live writer's open segment (ours included)
                return 0
            rows, seen = [], set()
            for line in handle:
                try:
                    row = traffic_record(json.loads(line))
                except (json.JSONDecodeError, TrafficRecordError):
                    # A line cut short by a kill mid-write: the request it belonged to was never acknowledged.
                    self.rejected["unreadable line in the write-ahead log"] += 1
                    continue
                key = (row["request_id"], row["instance"])
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
            hours: dict[tuple[str, str], list[dict]] = {}
            for row in rows:
                hours.setdefault((row["time"].strftime("%Y-%m-%d"), row["time"].strftime("%H")), []).append(row)
            for (day, hour), part in hours.items():
                path = self.directory / f"date={day}" / f"hour={hour}" / f"part-{segment.stem}.parquet"
                with atomic_write(path) as tmp:
                    pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), tmp)
            segment.unlink()  # only now: killed before this line, the next compaction rewrites the same parts
        return len(rows)

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.segment_seconds / 2)):
            with self._lock:
                if self._handle is not None and time.monotonic() - self._opened >= self.segment_seconds:
                    self._close_segment()
            try:
                self.compact()
            except OSError as error:  # a full disk, say: the segments stay, and the next round tries again
                self.compaction_errors += 1
                self.last_error = str(error)

    def close(self) -> None:
        """Stop the background thread, close the segment and compact everything: all records become visible."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.roll()
        self.compact()


def read_traffic(directory: str | Path, since: datetime | None = None, until: datetime | None = None,
                 columns: list[str] | None = None) -> pd.DataFrame:
    """The compacted records in [since, until) (times with a UTC offset), oldest first, one row per
    (request_id, instance) however often it was delivered. Empty (with the schema's columns) if none."""
    directory = Path(directory)
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name}: expected a time with a UTC offset, got a naive datetime {moment}")
    wanted = list(columns) if columns else list(SCHEMA.names)
    unknown = sorted(set(wanted) - set(SCHEMA.names))
    if unknown:
        raise ValueError(f"columns: unknown {unknown}; a traffic record has {SCHEMA.names}")
    read = list(dict.fromkeys([*wanted, *KEY, "time"]))
    # The parts by name: anything else in the directory (the write-ahead log, a half-written temporary, a file
    # a person left) is not traffic.
    parts = sorted(str(path) for path in directory.glob("date=*/hour=*/part-*.parquet"))
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in wanted})
    dataset = ds.dataset(parts, format="parquet", schema=SCHEMA)
    condition = None
    if since is not None:
        condition = ds.field("time") >= pa.scalar(since, type=SCHEMA.field("time").type)
    if until is not None:
        before = ds.field("time") < pa.scalar(until, type=SCHEMA.field("time").type)
        condition = before if condition is None else condition & before
    frame = dataset.to_table(columns=read, filter=condition).to_pandas()
    frame = frame.sort_values("time", kind="stable").drop_duplicates(list(KEY), keep="first")
    return frame[wanted].reset_index(drop=True)
