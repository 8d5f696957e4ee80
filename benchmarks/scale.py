"""Mechanics at scale: the synthetic shop grown to 10M+ pool pairs, every stage of the chain after the teacher run
out of core, and the distillation process's peak memory and speed at 1M, 3M and 10M pairs.

    python -m benchmarks.scale                       # ~1.5 h on 2 cores: 10.5M impressions, distil 1M / 3M / 10M
    python -m benchmarks.scale --smoke               # a minute: the same stages at 10k / 20k / 40k pairs

Stages, each a separate process whose peak RSS (ru_maxrss, with the anonymous / file-backed split sampled from
/proc/self/status) and wall time are recorded:

1. generate: the synthetic shop (relevance.data.synthetic, streaming) with enough impressions for the pool;
2. pool: relevance.labels.pool.build_pool (impressions in chunks, BM25 top-K of unjudged queries, bucketed de-dup);
3. labels: a CHEAP teacher, not a model: each pair's soft label is a softmax of hash-derived logits (deterministic,
   meaningless for quality). It is written by relevance.labels.labelling.write_label_shard, so what distillation reads is
   the real label-shard format, checked by relevance.labels.labelling.label_chunks. This benchmark measures memory and
   throughput, not quality; labelling speed of real teachers is benchmarks/labelling_cost.py's;
4. embeddings: the real bi-encoder (all-MiniLM-L6-v2) over every query and item, through the content-hash cache;
5. distil at each size (nested: the first label shards reaching N pairs): relevance.student.distillation.distil_student,
   i.e. embedding tables from the cache, the pair store (lexical features per shard), then one epoch of the
   student over batches assembled on the fly. One epoch: the speed per epoch is what scales.

Writes benchmarks/results/scale.{json,md} and scale.png (a smoke run: runs/scale-smoke/scale-smoke.*).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HASH_TEACHER = "hash-teacher-v1"
FULL = {"sizes": [1_000_000, 3_000_000, 10_000_000], "impressions": 10_500_000, "items": 20_000,
        "judged_queries": 2_000, "shard_rows": 100_000, "top_k": 2}
SMOKE = {"sizes": [10_000, 20_000, 40_000], "impressions": 45_000, "items": 1_000, "judged_queries": 200,
         "shard_rows": 5_000, "top_k": 2}


def settings(work: Path, scale: dict):
    from relevance.config import build_config

    return build_config("default", {
        "workdir": str(work),
        "data": {"source": "synthetic", "synthetic_items": scale["items"],
                 "synthetic_judged_queries": scale["judged_queries"], "synthetic_impressions": scale["impressions"]},
        "candidates": {"top_k": scale["top_k"]},
        "labeling": {"shard_rows": scale["shard_rows"]},
        # One epoch (speed per epoch is what scales); float16 tables and 8-shard shuffle windows.
        "student": {"epochs": 1, "table_dtype": "float16", "shuffle_window_shards": 8},
    })


class Memory:
    """Peak RSS of this process (ru_maxrss), and the peaks of its anonymous and file-backed parts, sampled."""

    def __init__(self, every_s: float = 0.2):
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True)
        self._thread.start()

    def _sample(self, every_s: float) -> None:
        while not self._stop.is_set():
            for line in open("/proc/self/status"):
                key = line.split(":")[0]
                if key in self.peaks:
                    self.peaks[key] = max(self.peaks[key], int(line.split()[1]))
            self._stop.wait(every_s)

    def result(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_anon_mb": self.peaks["RssAnon"] / 1024, "peak_file_mb": self.peaks["RssFile"] / 1024}


def hash_probs(pairs, num_grades: int):
    """The cheap teacher: softmax of logits derived from a hash of (query_id, item_id)."""
    import numpy as np
    import pandas as pd

    h = pd.util.hash_pandas_object(pairs[["query_id", "item_id"]], index=False).to_numpy(np.uint64)
    logits = np.stack([((h * np.uint64(2 * k + 1) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)).astype(np.float64)
                       / 2.0**53 * 4.0 for k in range(num_grades)], axis=1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def stage(name: str, work: Path, scale: dict, size: int | None) -> dict:
    """Run one stage in this process; returns what it measured."""
    from relevance.chain import Chain

    config = settings(work, scale)
    chain = Chain(config)
    memory = Memory()
    start = time.perf_counter()
    extra: dict = {}
    if name == "generate":
        dataset = chain.dataset()
        extra = {"queries": len(dataset.queries), "items": len(dataset.items), "judged": len(dataset.judgments)}
    elif name == "pool":
        import pyarrow.parquet as pq

        chain.pool(chain.dataset())
        extra = {"pairs": pq.ParquetFile(chain.pool_path).metadata.num_rows}
    elif name == "labels":
        from relevance.labels.labelling import (
            SHARD_PATTERN,
            num_shards,
            pool_fingerprint,
            read_shard,
            write_label_shard,
        )

        dataset = chain.dataset()
        shard_rows, pool = config.labeling.shard_rows, pool_fingerprint(chain.pool_path)
        chain.labels_dir.mkdir(parents=True, exist_ok=True)
        rows = 0
        for index in range(num_shards(chain.pool_path, shard_rows)):
            shard = read_shard(chain.pool_path, index, shard_rows)
            write_label_shard(chain.labels_dir / SHARD_PATTERN.format(index), shard,
                              hash_probs(shard, dataset.num_grades), HASH_TEACHER, pool, shard_rows, index)
            rows += len(shard)
        extra = {"pairs": rows, "teacher": "hash of (query_id, item_id) → softmax; not a model"}
    elif name == "embeddings":
        import pyarrow.parquet as pq

        dataset = chain.dataset()
        featurizer = chain.featurizer(dataset)
        pool_queries = pq.read_table(chain.pool_path, columns=["query_id"]).column("query_id").unique().to_pylist()
        texts = dataset.query_text.reindex(list(dict.fromkeys(pool_queries + dataset.queries["query_id"].tolist())))
        texts = list(dict.fromkeys(texts.tolist()))
        for first in range(0, len(texts), 50_000):
            featurizer.query_vectors(texts[first:first + 50_000])
        items = featurizer.item_text.index.tolist()
        for first in range(0, len(items), 50_000):
            featurizer.item_vectors_for(items[first:first + 50_000])
        extra = {"query_texts": len(texts), "items": len(items)}
    elif name == "distil":
        import pyarrow.parquet as pq

        from relevance.labels.labelling import label_chunks
        from relevance.student.distillation import distil_student

        dataset = chain.dataset()
        featurizer = chain.featurizer(dataset)
        chunks, rows = [], 0
        for source, load in label_chunks(chain.labels_dir, dataset.num_grades, pool_path=chain.pool_path):
            if rows >= size:
                break
            chunks.append((source, load))  # a source starts with its shard's file name
            rows += pq.ParquetFile(chain.labels_dir / source.split(":")[0]).metadata.num_rows
        valid_x = featurizer.pair_features(dataset.split("valid"), dataset.query_text)
        distil_work = work / f"distil-{size}"
        shutil.rmtree(distil_work, ignore_errors=True)
        times: dict[str, float] = {}

        def on_batch(epoch: int, batch: int) -> None:
            times.setdefault("first_batch", time.perf_counter())
            times["last_batch"] = time.perf_counter()
            times["batches"] = batch

        model, metrics, pairs = distil_student(
            config, dataset, chunks, featurizer, distil_work, valid_x, HASH_TEACHER,
            lambda: hash_probs(dataset.split("train"), dataset.num_grades), on_batch=on_batch)
        train_s = times["last_batch"] - times["first_batch"]
        store_bytes = sum(p.stat().st_size for p in (distil_work / "pairs").glob("*.parquet"))
        table_bytes = {t: (distil_work / "tables" / t / "vectors.npy").stat().st_size for t in ("queries", "items")}
        extra = {"pairs": int(pairs), "label_shards": len(chunks), "batches": times["batches"],
                 "epoch_s": train_s, "pairs_per_s": pairs * (times["batches"] - 1) / times["batches"] / train_s,
                 "store_mb": store_bytes / 2**20, "query_table_mb": table_bytes["queries"] / 2**20,
                 "item_table_mb": table_bytes["items"] / 2**20, "valid_pairs": int(len(valid_x)),
                 "log": metrics["history"]}
        shutil.rmtree(distil_work, ignore_errors=True)
    else:
        raise ValueError(f"unknown stage {name!r}")
    result = {"stage": name, "size": size, "wall_s": time.perf_counter() - start, **memory.result(), **extra}
    return result


def _run_stage(name: str, work: Path, mode: str, size: int | None = None) -> dict:
    out = work / f"stage-{name}{'-' + str(size) if size else ''}.json"
    if out.exists():
        return json.loads(out.read_text())
    command = [sys.executable, "-m", "benchmarks.scale", "--stage", name, "--work", str(work), "--mode", mode]
    if size:
        command += ["--size", str(size)]
    print(f"[scale] {name}{' ' + format(size, ',') if size else ''} …", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    print(f"[scale] {name}: {result['wall_s']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


def report(results: list[dict], scale: dict, command: str, mode: str, note: str = "") -> dict:
    import numpy as np

    from benchmarks import machine

    by = {r["stage"] + (f"-{r['size']}" if r["size"] else ""): r for r in results}
    sizes = scale["sizes"]
    distils = [by[f"distil-{n}"] for n in sizes]
    smallest, largest = distils[0], distils[-1]
    ratio = largest["peak_rss_mb"] / smallest["peak_rss_mb"]
    pool, emb = by["pool"], by["embeddings"]
    per_pair_store = sum(d["store_mb"] for d in distils) / sum(d["pairs"] for d in distils)
    # The 30M case on paper, from this run's rates (labelling: benchmarks/results/labelling-cost.json).
    target = 30_000_000
    pool_rate = pool["pairs"] / pool["wall_s"]
    store_rate = largest["pairs"] / (largest["wall_s"] - largest["epoch_s"])  # tables + store + valid features
    train_rate = largest["pairs_per_s"]
    queries_per_pair = emb["query_texts"] / pool["pairs"]  # distinct query texts to embed per pool pair
    embed_rate = (emb["query_texts"] + emb["items"]) / emb["wall_s"]
    # Peak RSS against pairs: a least-squares line through the measured sizes, read at 30M.
    slope, intercept = np.polyfit([d["pairs"] for d in distils], [d["peak_rss_mb"] for d in distils], 1)
    paper = {
        "pairs": target,
        "pool_s": target / pool_rate,
        "embeddings_s": target * queries_per_pair / embed_rate,
        "store_s": target / store_rate,
        "epoch_s": target / train_rate,
        "store_gb": target * per_pair_store / 1024,
        "query_table_gb": target * largest["query_table_mb"] / largest["pairs"] / 1024,
        "peak_rss_mb_estimate": slope * target + intercept,
        "peak_rss_mb_per_million_pairs": slope * 1e6,
    }
    summary = {
        "title": "Out-of-core distillation at 1M / 3M / 10M pool pairs (synthetic shop)",
        "command": command, "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "mode": mode, "note": note, "scale": scale, "stages": results,
        "targets": {"peak_rss_10m_mb_max": 4096, "ratio_10m_over_1m_max": 1.3,
                    "peak_rss_10m_mb": largest["peak_rss_mb"], "ratio_10m_over_1m": ratio,
                    "met": largest["peak_rss_mb"] <= 4096 and ratio <= 1.3},
        "paper_30m": paper,
    }
    return summary


def write(summary: dict, mode: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffix = "" if mode == "full" else f"-{mode}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scale{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    distils = [s for s in summary["stages"] if s["stage"] == "distil"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [d["pairs"] / 1e6 for d in distils]
    axes[0].plot(x, [d["peak_rss_mb"] for d in distils], "o-", label="peak RSS")
    axes[0].plot(x, [d["peak_anon_mb"] for d in distils], "s--", label="of which anonymous (peak)")
    axes[0].axhline(4096, color="tab:red", ls=":", label="target 4 GB")
    axes[0].set_xlabel("pairs distilled (millions)")
    axes[0].set_ylabel("MB")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    axes[0].set_title("distillation process memory")
    axes[1].plot(x, [d["pairs_per_s"] for d in distils], "o-")
    axes[1].set_xlabel("pairs distilled (millions)")
    axes[1].set_ylabel("pairs/s (training epoch)")
    axes[1].set_ylim(bottom=0)
    axes[1].set_title("student training speed")
    fig.tight_layout()
    fig.savefig(out / f"scale{suffix}.png", dpi=110)
    t, p = summary["targets"], summary["paper_30m"]
    lines = [f"# {summary['title']}", "",
             f"- Command: `{summary['command']}`", f"- Machine: {summary['machine']}", f"- Date: {summary['date']}",
             f"- Mode: {summary['mode']}" + (" (NOT the measurement: a smoke run of the code)" if mode != "full" else ""),
             *([f"- Note: {summary['note']}"] if summary.get("note") else []),
             "- Labels: a cheap hash teacher (softmax of logits hashed from the pair's ids), written in the real "
             "label-shard format. Memory and speed only; no quality is measured here.",
             "- Tables float16, shuffle window 8 shards of "
             f"{summary['scale']['shard_rows']:,} pairs, batch 512, student MLP [512, 128] on 4·384 + 13 features.",
             "", "![memory and speed](scale" + suffix + ".png)", "",
             "## Distillation (one process each: tables from the cache, pair store, one epoch)", "",
             "| pairs | peak RSS MB | peak anon MB | peak file-backed MB | wall s | of which epoch s | pairs/s (epoch) "
             "| pair store MB | query table MB |", "|---|---|---|---|---|---|---|---|---|"]
    for d in distils:
        lines.append(f"| {d['pairs']:,} | {d['peak_rss_mb']:.0f} | {d['peak_anon_mb']:.0f} | {d['peak_file_mb']:.0f} "
                     f"| {d['wall_s']:.0f} | {d['epoch_s']:.0f} | {d['pairs_per_s']:,.0f} | {d['store_mb']:.0f} "
                     f"| {d['query_table_mb']:.0f} |")
    lines += ["", f"Targets: peak RSS at the largest size {t['peak_rss_10m_mb']:.0f} MB (≤ 4096), ratio largest / "
              f"smallest {t['ratio_10m_over_1m']:.2f} (≤ 1.3): **{'met' if t['met'] else 'NOT met'}**.", "",
              "For comparison (arithmetic, not run): the in-memory path this replaced held every pair's vector, "
              "(4·384 + 13) float32 = 6.2 KB, in two to three copies: 6.2 GB per copy at 1M pairs, 62 GB at 10M.",
              "",
              "## Every stage", "", "| stage | wall s | peak RSS MB | what |", "|---|---|---|---|"]
    for s in summary["stages"]:
        what = {k: v for k, v in s.items() if k in ("pairs", "queries", "items", "query_texts", "judged")}
        name = s["stage"] + (f" {s['size']:,}" if s["size"] else "")
        lines.append(f"| {name} | {s['wall_s']:.0f} | {s['peak_rss_mb']:.0f} | "
                     f"{', '.join(f'{k} {v:,}' for k, v in what.items())} |")
    lines += ["", "## 30M pairs on paper (this run's rates, one 2-core process per stage)", "",
              f"- Pool: {p['pool_s'] / 60:.0f} min. Embeddings of the new queries: {p['embeddings_s'] / 60:.0f} min "
              f"(the content-hash cache embeds only new texts). Pair store: {p['store_s'] / 60:.0f} min "
              f"({p['store_gb']:.1f} GB on disk). One student epoch: {p['epoch_s'] / 60:.0f} min.",
              f"- Query table at 30M pairs (as many queries per pair as at the largest size): "
              f"{p['query_table_gb']:.2f} GB in float16, memory-mapped, its pages released every few batches. "
              "Distillation peak "
              f"RSS on the least-squares line through the measured sizes "
              f"({p['peak_rss_mb_per_million_pairs']:.0f} MB per million pairs): {p['peak_rss_mb_estimate']:.0f} MB. "
              "What still grows is per query, not per pair (the query ids, their texts, the featurizer's "
              "per-query cache up to its bound).",
              "- Labelling dominates: see labelling-cost.md (the 8B teacher on a GPU pool).",
              "", f"Rerun: `{summary['command']}`"]
    (out / f"scale{suffix}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, to check the code (not a measurement)")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default runs/scale[-smoke])")
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else the machine ran)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = args.mode or ("smoke" if args.smoke else "full")
    scale = SMOKE if mode == "smoke" else FULL
    work = (args.work or ROOT / "runs" / ("scale" if mode == "full" else "scale-smoke")).resolve()
    if args.stage:
        result = stage(args.stage, work, scale, args.size)
        name = f"stage-{args.stage}{'-' + str(args.size) if args.size else ''}.json"
        (work / name).write_text(json.dumps(result, indent=2))
        return
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = [_run_stage(name, work, mode) for name in ("generate", "pool", "labels", "embeddings")]
    results += [_run_stage("distil", work, mode, n) for n in scale["sizes"]]
    command = "python -m benchmarks.scale" + (" --smoke" if mode == "smoke" else "")
    summary = report(results, scale, command, mode, args.note)
    write(summary, mode, RESULTS if mode == "full" else work)  # a smoke run is no result: it stays in its workdir
    print(json.dumps(summary["targets"], indent=2))


if __name__ == "__main__":
    main()
