"""What the pair store's read path costs per epoch, by layout: is it why an epoch got slower?

After the store's shards were written shuffled in row groups (relevance.student.pairstore), the scale benchmark's
distillation epoch measured ~25% fewer pairs/s than before (benchmarks/results/scale.md), on another day. An
epoch is the read path (row groups read, rows gathered from the memory-mapped tables, student vectors assembled)
plus the MLP's steps, and only the read path depends on the layout. So this times the read path alone, on one
synthetic store per layout, in one process: an untimed epoch of each first, then rounds in a rotating order.

- ``row-groups``: the store as the product writes it (PAIR_ROW_GROUP rows per group, windows of groups drawn from
  the whole pool, the tables' pages released every RELEASE_EVERY_BATCHES batches);
- ``row-groups, release per window``: the same store, pages released only at the end of a window;
- ``whole shards``: one row group per shard (a window is whole shards, as before the change).

The shapes are the scale benchmark's (benchmarks/scale.py): label shards of 100k pairs, grouped by query as real
pools are, ~20 pairs per query (a 1M pool's query table is ~50k rows, a 10M pool's ~500k), a 20k-item catalog,
float16 tables, 512-pair batches, 8-shard windows. Vectors and lexical features are random: the read path does not
look at their values.

    python -m benchmarks.pairstore_read [--pairs 1000000] [--rounds 5]

Writes benchmarks/results/pairstore-read.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import machine
from relevance.student import pairstore

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NUM_GRADES, DIMENSION, SHARD_ROWS, BATCH, ITEMS, PAIRS_PER_QUERY = 5, 384, 100_000, 512, 20_000, 20


def _chunks(pairs: int, queries: list[str], items: list[str]):
    """Label chunks of SHARD_ROWS pairs, each the candidates of its own run of queries (a pool's order)."""
    shards = max(1, pairs // SHARD_ROWS)
    per = pairs // shards

    def load(index: int) -> pd.DataFrame:
        rng = np.random.default_rng(index)
        lo, hi = index * len(queries) // shards, (index + 1) * len(queries) // shards
        frame = pd.DataFrame({"query_id": np.asarray(queries)[np.sort(rng.integers(lo, hi, per))],
                              "item_id": np.asarray(items)[rng.integers(0, len(items), per)]})
        probs = rng.dirichlet(np.ones(NUM_GRADES), per)
        for grade in range(NUM_GRADES):
            frame[f"p_{grade}"] = probs[:, grade]
        return frame

    return [(f"synthetic-{index}", lambda index=index: load(index)) for index in range(shards)]


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


def _measure(args) -> tuple[dict[str, list[float]], int]:
    """Seconds per epoch of each variant, per round."""
    work = Path(tempfile.mkdtemp(prefix="pairstore-read-"))
    try:
        queries, items, query_table, item_table = _tables(work, max(100, args.pairs // PAIRS_PER_QUERY), ITEMS)
        group = pairstore.PAIR_ROW_GROUP
        variants = {"row-groups": (work / "row-groups", group, pairstore.RELEASE_EVERY_BATCHES),
                    "row-groups, release per window": (work / "row-groups", group, 10**12),
                    "whole shards": (work / "whole-shards", args.pairs, 10**12)}  # a group per shard
        for directory, rows_per_group, _ in variants.values():
            pairstore.PAIR_ROW_GROUP = rows_per_group
            try:
                pairstore.build_pair_store(directory, _chunks(args.pairs, queries, items), _lexical, query_table,
                                           item_table, NUM_GRADES)
            finally:
                pairstore.PAIR_ROW_GROUP = group
        names = list(variants)
        for name in names:  # untimed: the first epoch in a process pays for imports, allocations, cold pages
            _epoch_s(variants[name][0], query_table, item_table, variants[name][2])
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # no variant always first
                seconds, rows = _epoch_s(variants[name][0], query_table, item_table, variants[name][2])
                times[name].append(seconds)
                print(f"round {round_ + 1}/{args.rounds} {name}: {rows / seconds:,.0f} pairs/s", flush=True)
        return times, rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _markdown(result: dict, scale: dict) -> str:
    rows, variants = result["pairs"], result["variants"]
    lines = ["# The pair store's read path, by layout", "",
             f"One epoch's read path (row groups read, rows gathered, student vectors assembled; no training) over "
             f"{rows:,} pairs in {result['shards']} query-grouped shards, {result['batch_size']}-pair batches: "
             f"medians of {result['rounds']} rounds (order rotated, after an untimed epoch of each), and the "
             "median of the per-round ratios to whole shards.", "",
             "| layout | median s per epoch | min–max s | pairs/s | time / whole shards, per round: median (min–max) |",
             "|---|---|---|---|---|"]
    for name, row in variants.items():
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f}–{row['max_s']:.2f} | "
                     f"{row['pairs_per_s']:,.0f} | {row['ratio_median']:.2f}× ({row['ratio_min']:.2f}–"
                     f"{row['ratio_max']:.2f}) |")
    product, layout = variants["row-groups"], variants["row-groups, release per window"]
    extra = (product["median_s"] - variants["whole shards"]["median_s"]) / rows * 1e6
    lines += ["", f"The product's read path (row groups, pages released every {result['release_every_batches']} "
              f"batches) takes {extra:+.2f} s per 1M pairs over whole shards ({product['ratio_median'] - 1:+.0%}); "
              f"the row groups alone {layout['ratio_median'] - 1:+.0%}."]
    distil = [stage for stage in scale.get("stages", []) if stage["stage"] == "distil"]
    nearest = min(distil, key=lambda stage: abs(stage["pairs"] / rows - 1), default=None)
    if nearest and abs(nearest["pairs"] / rows - 1) < 0.1:  # the scale benchmark's epoch on a pool of this size
        epoch = nearest["epoch_s"] / nearest["pairs"] * 1e6
        bound = " at most" if result["note"] else ""
        lines += [f"The scale benchmark's {nearest['pairs']:,}-pair distillation epoch (scale.json, {scale.get('date')}"
                  f") took {epoch:.1f} s per 1M pairs (read path and MLP steps), so the read path is{bound} "
                  f"{product['median_s'] / rows * 1e6 / epoch:.0%} of an epoch and the layout's extra{bound} "
                  f"{extra / epoch:.1%}" + (" (this run's read path was timed on a busy machine, scale.json's "
                                            "epoch on an idle one)." if result["note"] else ".")]
    lines += ["", f"Machine: {result['machine']}. Date: {result['date']}." + (f" {result['note']}" if result["note"]
                                                                              else ""),
              "", "Rerun:", "", f"    {result['command']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    if args.pairs < 10 * BATCH or args.rounds < 1:
        parser.error(f"--pairs must be at least {10 * BATCH} and --rounds at least 1")
    times, rows = _measure(args)
    base = times["whole shards"]
    result = {
        "pairs": rows, "shards": max(1, args.pairs // SHARD_ROWS), "rounds": args.rounds, "batch_size": BATCH,
        "row_group": pairstore.PAIR_ROW_GROUP, "release_every_batches": pairstore.RELEASE_EVERY_BATCHES,
        "variants": {}, "times_s": times,
        # --note is the report's, not the measurement's: a rerun from this line should not inherit it.
        "command": shlex.join(["python", "-m", "benchmarks.pairstore_read",
                               *(["--pairs", str(args.pairs)] if args.pairs != 1_000_000 else []),
                               *(["--rounds", str(args.rounds)] if args.rounds != 5 else [])]),
        "machine": machine(), "date": datetime.now(timezone.utc).date().isoformat(), "note": args.note,
    }
    for name, values in times.items():
        ratios = [value / whole for value, whole in zip(values, base)]
        result["variants"][name] = {
            "median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
            "pairs_per_s": rows / statistics.median(values), "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}
    scale = json.loads((RESULTS / "scale.json").read_text()) if (RESULTS / "scale.json").exists() else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pairstore-read.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result, scale)
    (RESULTS / "pairstore-read.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
