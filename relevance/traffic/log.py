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
- **Bounded memory.** A writer holds one open file; a segment holds at most ``segment_records`` records and
  ``segment_bytes`` bytes, and compaction streams it in chunks of :data:`CHUNK` records.
- **Live segments are left alone.** A writer holds an exclusive lock (flock) on its open segment, released by
  the kernel when it dies, so several writers may share a directory and each compacts only dead or closed
  segments. Readers see a record once its segment is compacted: within ``segment_seconds``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
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

from relevance.traffic.records import KEY, SCHEMA, TrafficRecordError, traffic_record

WAL = "_wal"  # a leading underscore: pyarrow's dataset discovery skips it
_logger = logging.getLogger(__name__)


class TrafficLog:
    """Append checked traffic records to ``directory`` (see the module docstring). Thread-safe.

    ``background``: compact in a daemon thread (a server: parquet writes stay off the request path); otherwise
    :meth:`append` rolls a full segment and :meth:`compact` / :meth:`close` are called by the owner."""

    def __init__(self, directory: str | Path, segment_records: int = 10_000, segment_seconds: float = 60.0,
                 fsync: bool = False, background: bool = False, segment_bytes: int = 64 << 20):
        if segment_records < 1 or segment_seconds <= 0:
            raise ValueError(f"segment_records must be >= 1 and segment_seconds > 0, got {segment_records} and "
                             f"{segment_seconds}")
        self.directory = Path(directory)
        self.wal = self.directory / WAL
        self.wal.mkdir(parents=True, exist_ok=True)
        self.segment_records, self.segment_seconds, self.fsync = segment_records, segment_seconds, fsync
        self.segment_bytes = segment_bytes
        self.appended = 0
        self.compacted = 0  # records written to parquet by this writer
        self.rejected: Counter[str] = Counter()  # why records were skipped, and how many
        self.compaction_errors = 0  # background compactions that failed (the segments stay; retried)
        self.last_error = ""
        self._lock = threading.Lock()
        self._handle = None
        self._count = self._bytes = 0
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
            line = json.dumps({**normal, "time": normal["time"].isoformat()}, ensure_ascii=False,
                              separators=(",", ":")) + "\n"
            line.encode("utf-8")  # a lone surrogate cannot be written: refuse it here, not mid-line
        except TrafficRecordError as error:
            self.rejected[error.field] += 1
            return False
        except (UnicodeError, ValueError, RecursionError):
            self.rejected["text that is not valid Unicode"] += 1
            return False
        with self._lock:
            if self._handle is None:
                self._open()
            self._handle.write(line)
            self._handle.flush()
            if self.fsync:
                os.fsync(self._handle.fileno())
            self._count += 1
            self._bytes += len(line.encode("utf-8"))
            self.appended += 1
            if self._count >= self.segment_records or self._bytes >= self.segment_bytes:
                self._close_segment()
        return True

    def _open(self) -> None:
        # Created under a name compaction does not look at, locked, and only then named a segment: a compactor
        # can never take a fresh segment for an abandoned one in the moment between its creation and its lock.
        stem = f"segment-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        opening = self.wal / f".{stem}.opening"
        handle = open(opening, "a", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
            os.rename(opening, self.wal / f"{stem}.jsonl")
            if self.fsync:
                _fsync_directory(self.wal)
        except BaseException:
            handle.close()
            opening.unlink(missing_ok=True)
            raise
        self._handle, self._count, self._bytes, self._opened = handle, 0, 0, time.monotonic()

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
        written, failed = 0, None
        for segment in sorted(self.wal.glob("segment-*.jsonl")):
            try:
                written += self._compact(segment)
            except Exception as error:  # this segment stays for the next round; the others go on
                failed = failed or error
                self.compaction_errors += 1
                self.last_error = f"{segment.name}: {type(error).__name__}: {error}"[:500]
                _logger.warning("traffic compaction of %s failed (it stays): %s", segment.name, self.last_error)
        self.compacted += written
        return written

    def _compact(self, segment: Path) -> int:
        try:
            handle = open(segment, "rb")
        except FileNotFoundError:  # another writer compacted it meanwhile
            return 0
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live writer's open segment (ours included)
                return 0
            try:  # locked, but is it still the segment? Another compactor may have finished and deleted it.
                if os.stat(segment).st_ino != os.fstat(handle.fileno()).st_ino:
                    return 0
            except FileNotFoundError:
                return 0
            written = self._write_parts(handle, segment.stem)
            segment.unlink(missing_ok=True)  # only now: killed before this, the next compaction redoes the parts
        return written

    def _write_parts(self, handle, stem: str) -> int:
        """The segment's records into one part per hour, streamed in chunks of :data:`CHUNK` records (memory
        stays at a chunk whatever the segment's size); duplicates of a key within the segment are dropped."""
        writers: dict[tuple[str, str], tuple[pq.ParquetWriter, Path, Path]] = {}  # writer, temporary, part
        seen: set[tuple[str, int]] = set()
        written = 0
        try:
            for chunk in _chunks(handle, CHUNK):
                rows = []
                for line in chunk:
                    row = _stored_row(line)
                    if row is None:
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
                for hour, part in list(hours.items()):
                    if hour not in writers:
                        path = self.directory / f"date={hour[0]}" / f"hour={hour[1]}" / f"part-{stem}.parquet"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
                        writers[hour] = (pq.ParquetWriter(tmp, SCHEMA), tmp, path)
                    writers[hour][0].write_table(self._table(part))
                written += len(rows)
            for writer, tmp, path in writers.values():
                writer.close()
                if self.fsync:
                    with open(tmp, "rb") as part:
                        os.fsync(part.fileno())
                os.replace(tmp, path)  # a redone compaction replaces the same part: no duplicates
                if self.fsync:  # the part's entry, and the hour and date folders' own, before the segment goes
                    for folder in (path.parent, path.parent.parent, self.directory):
                        _fsync_directory(folder)
        finally:
            for writer, tmp, _ in writers.values():
                with contextlib.suppress(Exception):  # after a failure: keep the first error, clean up the rest
                    writer.close()
                tmp.unlink(missing_ok=True)
        return written

    def _table(self, rows: list[dict]) -> pa.Table:
        try:
            return pa.Table.from_pylist(rows, schema=SCHEMA)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            # A corrupted line with the right keys: check every row again and keep the good ones.
            good = []
            for row in rows:
                try:
                    good.append(traffic_record(row))
                except TrafficRecordError:
                    self.rejected["unreadable line in the write-ahead log"] += 1
            return pa.Table.from_pylist(good, schema=SCHEMA)

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.segment_seconds / 2)):
            with self._lock:
                if self._handle is not None and time.monotonic() - self._opened >= self.segment_seconds:
                    self._close_segment()
            try:
                self.compact()  # counts and logs a segment that fails; anything else must not end the thread
            except Exception as error:
                self.compaction_errors += 1
                self.last_error = f"{type(error).__name__}: {error}"[:500]
                _logger.warning("traffic compaction failed: %s", self.last_error)

    def close(self) -> None:
        """Stop the background thread, close the segment and compact everything: all records become visible."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.roll()
        self.compact()


CHUNK = 2_000  # records per compaction step


def _chunks(handle, size: int):
    chunk = []
    for line in handle:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _stored_row(line: bytes) -> dict | None:
    """A write-ahead-log line back as a row, or None if it is not one (cut short by a kill). Lines were checked
    when appended (:meth:`TrafficLog.append`): only what a torn write could break is checked again."""
    try:
        row = json.loads(line)
        row["time"] = datetime.fromisoformat(row["time"])
        if set(row) != set(SCHEMA.names):
            return None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return None
    return row


def _fsync_directory(directory: Path) -> None:
    """Make a directory's entries (a created, renamed or deleted file) durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_traffic(directory: str | Path, since: datetime | None = None, until: datetime | None = None,
                 columns: list[str] | None = None, request_ids=None) -> pd.DataFrame:
    """The compacted records in [since, until) (times with a UTC offset), oldest first, one row per
    (request_id, instance) however often it was delivered; only ``columns``, and only ``request_ids`` when given.
    Hours outside the window are not opened (their folders name them). Empty, with the schema's columns, if
    there are none. A part that cannot be read (a power loss before it reached the disk) is skipped and logged:
    its segment was deleted only after it was written, so at worst the records of one segment are missing."""
    directory = Path(directory)
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name}: expected a time with a UTC offset, got a naive datetime {moment}")
    wanted = list(columns) if columns else list(SCHEMA.names)
    unknown = sorted(set(wanted) - set(SCHEMA.names))
    if unknown:
        raise ValueError(f"columns: unknown {unknown}; a traffic record has {SCHEMA.names}")
    read = list(dict.fromkeys([*wanted, *KEY, "time"]))
    parts = [str(part) for part in _parts_in(directory, since, until)]
    if not parts or (request_ids is not None and not len(request_ids)):
        return SCHEMA.empty_table().select(wanted).to_pandas()
    dataset = ds.dataset(parts, format="parquet", schema=SCHEMA)
    condition = None
    for clause in (ds.field("time") >= pa.scalar(since, type=SCHEMA.field("time").type) if since else None,
                   ds.field("time") < pa.scalar(until, type=SCHEMA.field("time").type) if until else None,
                   ds.field("request_id").isin(pa.array(list(request_ids), type=pa.string()))
                   if request_ids is not None else None):
        if clause is not None:
            condition = clause if condition is None else condition & clause
    frame = dataset.to_table(columns=read, filter=condition).to_pandas()
    frame = frame.sort_values("time", kind="stable").drop_duplicates(list(KEY), keep="first")
    return frame[wanted].reset_index(drop=True)


def _parts_in(directory: Path, since: datetime | None, until: datetime | None) -> list[Path]:
    """The readable parts whose hour (from their folders) meets [since, until)."""
    from datetime import timezone

    low = since.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0) if since else None
    found = []
    for part in sorted(directory.glob("date=*/hour=*/part-*.parquet")):
        try:
            hour = datetime.strptime(f"{part.parent.parent.name[5:]} {part.parent.name[5:]}",
                                     "%Y-%m-%d %H").replace(tzinfo=timezone.utc)
        except ValueError:
            continue  # not a folder this log wrote
        if (low is not None and hour < low) or (until is not None and hour >= until):
            continue
        try:
            pq.read_metadata(part)
        except (OSError, pa.ArrowException) as error:
            _logger.warning("traffic: skipping unreadable part %s (%s)", part, error)
            continue
        found.append(part)
    return found
