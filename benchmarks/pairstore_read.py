"""What the pair store's read path costs per epoch, by layout: is it why an epoch got slower?

After the store's shards were written shuffled in row groups (relevance.student.pairstore), the scale benchmark's
distillation epoch measured ~25% fewer pairs/s than before (benchmarks/results/scale.md), on another day. An
epoch is the read path (row groups read, rows gathered from the memory-mapped tables, student vectors assembled)
plus the MLP's steps, and only the read path depends on the layout. So this times the read path alone, on one
synthetic store per layout, variants interleaved round by round in one process:

- ``row-groups``: the store as the product writes it (PAIR_ROW_GROUP rows per group, windows of groups drawn from
  the whole pool, the tables' pages released every RELEASE_EVERY_BATCHES batches);
- ``row-groups, release per window``: the same, pages released only at the end of a window;
- ``whole shards``: one row group per shard (a window is whole shards, as before the change).

The pool is grouped by query as real pools are (relevance.labels.pool), with the scale benchmark's table sizes at
1M pairs (about 49k queries, 19k items, float16, 512-pair batches, 8-shard windows). Vectors are random: the read
path does not look at their values.

    python -m benchmarks.pairstore_read [--pairs 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import machine
from relevance.student import pairstore

RESULTS = Path(__file__).resolve().parent / "results"
NUM_GRADES, DIMENSION, SHARDS, BATCH = 5, 384, 10, 512


def _chunks(pairs: int, queries: list[str], items: list[str]):
    """SHARDS label chunks, each the candidates of its own run of queries (a pool's order)."""
    per = pairs // SHARDS

    def load(index: int) -> pd.DataFrame:
        rng = np.random.default_rng(index)
        lo, hi = index * len(queries) // SHARDS, (index + 1) * len(queries) // SHARDS
        frame = pd.DataFrame({"query_id": np.asarray(queries)[np.sort(rng.integers(lo, hi, per))],
                              "item_id": np.asarray(items)[rng.integers(0, len(items), per)]})
        probs = rng.dirichlet(np.ones(NUM_GRADES), per)
        for grade in range(NUM_GRADES):
            frame[f"p_{grade}"] = probs[:, grade]
        return frame

    return [(f"synthetic-{index}", lambda index=index: load(index)) for index in range(SHARDS)]


def _tables(work: Path, num_queries: int, num_items: int):
    def embed(ids: list[str]) -> np.ndarray:
        return np.random.default_rng(len(ids)).standard_normal((len(ids), DIMENSION)).astype(np.float32)

    queries = [f"q{i}" for i in range(num_queries)]
    items = [f"i{i}" for i in range(num_items)]
    return (queries, items, pairstore.EmbeddingTable.build(work / "queries", queries, queries, embed, "random"),
            pairstore.EmbeddingTable.build(work / "items", items, items, embed, "random"))


def _lexical(frame: pd.DataFrame) -> np.ndarray:
    return np.random.default_rng(len(frame)).standard_normal((len(frame), len(pairstore.LEXICAL_COLUMNS)))


def _epoch_s(store: Path, query_table, item_table, release_every: int) -> tuple[float, int]:
    saved = pairstore.RELEASE_EVERY_BATCHES
    pairstore.RELEASE_EVERY_BATCHES = release_every
    try:
        batches = pairstore.StoreBatches(store, query_table, item_table, BATCH, seed=0, window_shards=8)
        start, rows = time.perf_counter(), 0
        for features, _, _ in batches.epoch(1):
            rows += len(features)
        return time.perf_counter() - start, rows
    finally:
        pairstore.RELEASE_EVERY_BATCHES = saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    if args.pairs < SHARDS * BATCH or args.rounds < 1:
        parser.error(f"--pairs must be at least {SHARDS * BATCH} and --rounds at least 1")
    work = Path(tempfile.mkdtemp(prefix="pairstore-read-"))
    try:
        # The scale benchmark's tables at 1M pairs: ~49k queries, ~19k items (scaled with the pool).
        queries, items, query_table, item_table = _tables(
            work, max(100, args.pairs * 49 // 1000), max(100, args.pairs * 19 // 1000))
        group = pairstore.PAIR_ROW_GROUP
        stores = {"row-groups": (work / "row-groups", group, pairstore.RELEASE_EVERY_BATCHES),
                  "row-groups, release per window": (work / "row-groups", group, 10**12),
                  "whole shards": (work / "whole-shards", args.pairs, 10**12)}
        for directory, rows_per_group, _ in stores.values():
            pairstore.PAIR_ROW_GROUP = rows_per_group
            try:
                pairstore.build_pair_store(directory, _chunks(args.pairs, queries, items), _lexical, query_table,
                                           item_table, NUM_GRADES)
            finally:
                pairstore.PAIR_ROW_GROUP = group
        times: dict[str, list[float]] = {name: [] for name in stores}
        for round_ in range(args.rounds):
            for name, (directory, _, release_every) in stores.items():
                seconds, rows = _epoch_s(directory, query_table, item_table, release_every)
                times[name].append(seconds)
                print(f"round {round_ + 1}/{args.rounds} {name}: {rows / seconds:,.0f} pairs/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["whole shards"]
    result = {
        "pairs": rows, "rounds": args.rounds, "batch_size": BATCH, "row_group": group,
        "variants": {name: {"median_s": median[name], "pairs_per_s": rows / median[name],
                            "min_s": min(times[name]), "max_s": max(times[name]),
                            "vs_whole_shards": median[name] / base} for name in stores},
        "command": shlex.join(["python", "-m", "benchmarks.pairstore_read", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(), "date": datetime.now(timezone.utc).date().isoformat(), "note": args.note,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pairstore-read.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# The pair store's read path, by layout", "",
             f"One epoch's read path (row groups read, rows gathered, student vectors assembled; no training) over "
             f"{rows:,} pairs in {SHARDS} query-grouped shards, {BATCH}-pair batches, median of {args.rounds} "
             "interleaved rounds.", "",
             "| layout | median s per epoch | min–max s | pairs/s | time vs whole shards |", "|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f}–{row['max_s']:.2f} | "
                     f"{row['pairs_per_s']:,.0f} | {row['vs_whole_shards']:.2f}× |")
    extra = median["row-groups"] - base
    lines += ["", f"The row-group layout adds {extra / rows * 1e6:+.2f} s per 1M pairs to the read path "
              f"({median['row-groups'] / base - 1:+.0%})."]
    scale = json.loads((RESULTS / "scale.json").read_text()) if (RESULTS / "scale.json").exists() else {}
    distil = [stage for stage in scale.get("stages", []) if stage["stage"] == "distil"]
    if distil:  # what a whole epoch (read path + MLP steps) took in the scale benchmark, on the product's layout
        epoch = statistics.median(stage["epoch_s"] / stage["pairs"] * 1e6 for stage in distil)
        share = extra / rows * 1e6 / epoch
        lines += [f"The scale benchmark's distillation epochs (scale.json, {scale.get('date')}) took {epoch:.1f} s per "
                  f"1M pairs, so the read path is {median['row-groups'] / rows * 1e6 / epoch:.0%} of an epoch and the "
                  f"layout's extra {share:.1%} of it."]
    lines += ["", f"Machine: {result['machine']}. Date: {result['date']}." + (f" {args.note}" if args.note else ""),
              "", "Rerun:", "", f"    {result['command']}", ""]
    (RESULTS / "pairstore-read.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
