import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from relevance.traffic import TrafficLog, read_traffic
from relevance.traffic.log import WAL

START = datetime(2026, 12, 3, 9, 59, 30, tzinfo=timezone.utc)


def record(n: int, **changes) -> dict:
    return {"request_id": f"r-{n}", "time": START + timedelta(seconds=10 * n), "model_name": "m",
            "model_version": "v1", "embedding_version": "e1", "query": f"query {n % 7}", "locale": "en-US",
            "item_ids": [f"i{n}", f"i{n + 1}"], "scores": [2.0, 1.0], "unknown": [False, False],
            "query_cache_hit": n % 2 == 0, "source": "transformer", **changes}


def test_records_round_trip_partitioned_by_hour_and_windowed(tmp_path):
    log = TrafficLog(tmp_path, segment_records=4)
    for n in range(10):
        assert log.append(record(n))
    log.close()
    assert not list((tmp_path / WAL).glob("segment-*"))
    hours = sorted(p.relative_to(tmp_path).parts[:2] for p in tmp_path.glob("date=*/hour=*/*.parquet"))
    assert {h for h in hours} == {("date=2026-12-03", "hour=09"), ("date=2026-12-03", "hour=10")}
    frame = read_traffic(tmp_path)
    assert frame["request_id"].tolist() == [f"r-{n}" for n in range(10)]
    assert frame.loc[3, "item_ids"].tolist() == ["i3", "i4"] and frame.loc[3, "time"] == START + timedelta(seconds=30)
    window = read_traffic(tmp_path, since=START + timedelta(seconds=30), until=START + timedelta(seconds=60),
                          columns=["request_id"])
    assert window["request_id"].tolist() == ["r-3", "r-4", "r-5"] and list(window.columns) == ["request_id"]
    assert read_traffic(tmp_path / "nothing").empty
    with pytest.raises(ValueError, match="naive"):
        read_traffic(tmp_path, since=datetime(2026, 12, 3))
    with pytest.raises(ValueError, match="unknown"):
        read_traffic(tmp_path, columns=["nope"])


def test_bad_records_are_counted_and_skipped(tmp_path):
    log = TrafficLog(tmp_path)
    assert not log.append(record(1, scores=[1.0]))
    assert not log.append(record(2, request_id=""))
    assert not log.append("not a record")
    assert log.append(record(3))
    log.close()
    assert log.rejected == {"scores": 1, "request_id": 1, "expected an object, got str": 1}
    assert read_traffic(tmp_path)["request_id"].tolist() == ["r-3"]


def test_redelivered_records_are_read_once_and_a_redone_compaction_duplicates_nothing(tmp_path):
    log = TrafficLog(tmp_path)
    for n in range(3):
        log.append(record(n))
    log.roll()
    segment = next((tmp_path / WAL).glob("segment-*"))
    kept = tmp_path / "kept"
    shutil.copy(segment, kept)
    log.compact()
    shutil.copy(kept, segment)  # as if killed after writing the parts, before deleting the segment
    log.append(record(1))  # the sender retried request r-1
    log.close()
    assert read_traffic(tmp_path)["request_id"].tolist() == ["r-0", "r-1", "r-2"]
    assert len(list(tmp_path.glob("date=*/hour=*/*.parquet"))) == 2  # the redone compaction overwrote its parts


def test_a_live_writers_segment_is_left_alone(tmp_path):
    first, second = TrafficLog(tmp_path), TrafficLog(tmp_path)
    first.append(record(1))
    assert second.compact() == 0 and read_traffic(tmp_path).empty
    first.roll()
    assert second.compact() == 1 and read_traffic(tmp_path)["request_id"].tolist() == ["r-1"]
    first.close()
    second.close()


WRITER = """
import sys
from datetime import datetime, timezone
from relevance.traffic import TrafficLog
log = TrafficLog(sys.argv[1], segment_records=50)
n = 0
while True:
    log.append({"request_id": f"r-{n}", "time": datetime.now(timezone.utc), "model_name": "m",
                "model_version": "v1", "query": "q", "item_ids": ["a"], "scores": [1.0], "source": "logger"})
    print(n, flush=True)  # acknowledged
    n += 1
"""


def test_a_killed_writer_loses_nothing_it_acknowledged(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    for line in writer.stdout:
        acknowledged.append(f"r-{line.strip()}")
        if len(acknowledged) == 420:  # mid-segment: 8 closed segments, the 9th open
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    with open(next(iter(sorted((tmp_path / WAL).glob("segment-*")))), "a") as torn:
        torn.write('{"request_id": "r-cut", "ti')  # a line cut short by the kill
    resumed = TrafficLog(tmp_path)  # compacts what the killed writer left
    stored = read_traffic(tmp_path)["request_id"].tolist()
    assert set(acknowledged) <= set(stored) and len(stored) == len(set(stored))
    assert resumed.rejected == {"unreadable line in the write-ahead log": 1}
    resumed.close()


def test_background_compaction_makes_records_readable(tmp_path):
    log = TrafficLog(tmp_path, segment_seconds=0.2, background=True)
    log.append(record(1))
    deadline = time.monotonic() + 10
    while read_traffic(tmp_path).empty and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_traffic(tmp_path)["request_id"].tolist() == ["r-1"]
    log.close()
    assert log.compaction_errors == 0


def test_memory_does_not_grow_with_the_traffic(tmp_path):
    # One open file and one segment at a time: 20 segments cost what one does.
    import tracemalloc

    log = TrafficLog(tmp_path, segment_records=500)
    tracemalloc.start()
    for n in range(1000):
        log.append(record(n, time=START))
    log.compact()
    first = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    for n in range(1000, 10_000):
        log.append(record(n, time=START))
        if n % 1000 == 0:
            log.compact()
    log.close()
    later = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert later < 2 * first, (first, later)
    assert len(read_traffic(tmp_path, columns=["request_id"])) == 10_000
    assert isinstance(read_traffic(tmp_path).loc[0, "time"], pd.Timestamp)


def test_an_unreadable_part_is_skipped_and_segments_roll_by_size(tmp_path):
    log = TrafficLog(tmp_path, segment_bytes=1000)  # about three records a segment
    for n in range(10):
        log.append(record(n))
    assert len(list((tmp_path / WAL).glob("segment-*"))) >= 3
    log.close()
    parts = sorted(tmp_path.glob("date=*/hour=*/*.parquet"))
    parts[0].write_bytes(b"")  # as a power loss could leave it
    frame = read_traffic(tmp_path)
    assert 0 < len(frame) < 10 and frame["request_id"].is_unique


def test_records_out_of_range_are_refused(tmp_path):
    log = TrafficLog(tmp_path)
    assert not log.append(record(1, scores=[1e300, 1.0]))  # finite as a float64, inf as the float32 stored
    assert not log.append(record(2, time="0001-01-01T00:00:00+01:00"))
    assert not log.append(record(3, query="bad \ud800 surrogate"))
    assert not log.append(record(4, **{f"field{n}": 1 for n in range(50)}))
    log.close()
    assert log.rejected == {"scores": 1, "time": 1, "text that is not valid Unicode": 1, "unknown fields": 1}
