"""What a tuned tower costs to put in service: embedding the catalog again (incremental by content hash, per
encoder version) and the query encoder on a cache miss, tuned vs frozen, and separate (smaller) query towers.

    .venv/bin/python -m benchmarks.tower_cost [--config configs/homedepot-minilm.yaml] [--towers DIR]

Needs the bench-quality-minilm run (runs/homedepot: its dataset) and tuned towers (by default the towers study's,
``python -m benchmarks.studies --only towers``; any `relevance distil-towers` output will do). Measures, on this
machine:

- the catalog embedded by the tuned tower into an empty cache (the first materialization of a new version), the
  same catalog again (nothing new: every vector is found by its content hash), and again after 1% of the item
  texts changed (only those run through the encoder); items/s for the frozen and the tuned encoder on the same
  sample, interleaved (same architecture: the ratio should be ~1);
- the ONNX query encoder (as exported into a serving bundle, fused) on one core, one query at a time over the
  dataset's queries, frozen and tuned interleaved: p50 / p99;
- the 10M-item figure on paper, from the measured rate and the sizes of what a version stores.

Writes benchmarks/results/tower-cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = 2_000  # items per encoder for the frozen-vs-tuned rate (interleaved in batches)
CHANGED = 0.01  # the share of item texts changed before the incremental re-embedding
QUERIES = 1_000  # single-query encodings per encoder on a cache miss
CATALOG_AT_SCALE = 10_000_000


def _study_towers() -> Path:
    """The towers study's newest shared tuned towers (the ones its query towers are distilled from)."""
    found = sorted((p for p in (ROOT / "runs/studies/towers").glob("towers-*/model/towers.json")
                    if json.loads(p.read_text()).get("shared", True)), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("no tuned towers: run `python -m benchmarks.studies --only towers` or pass --towers")
    return found[-1].parent


def catalog_embedding(frozen: str, tuned: str, max_length: int, texts: list[str], work: Path, log=print) -> dict:
    from relevance.student.encoder import BiEncoder, EmbeddingCache

    encoders = {"frozen": BiEncoder(frozen, max_length), "tuned": BiEncoder(tuned, max_length)}
    # The rate: the same sample through both, in alternating batches (the machine's load hits both alike).
    sample = texts[:SAMPLE]
    seconds = {name: 0.0 for name in encoders}
    for start in range(0, len(sample), 250):
        for name, encoder in encoders.items():
            begun = time.perf_counter()
            encoder.encode(sample[start:start + 250])
            seconds[name] += time.perf_counter() - begun
    rate = {name: len(sample) / s for name, s in seconds.items()}
    log(f"items/s on {len(sample)} items: {rate}")

    cache_dir = work / "cache"
    encoder = encoders["tuned"]

    def embed(batch: list[str]) -> tuple[float, int]:
        cache = EmbeddingCache(cache_dir, encoder)  # opened afresh, as a materialization step would
        begun = time.perf_counter()
        cache.embed(batch, "catalog")
        return time.perf_counter() - begun, cache.last_misses

    cold, cold_new = embed(texts)
    log(f"cold: {len(texts)} items in {cold:.0f} s")
    warm, warm_new = embed(texts)
    rng = np.random.default_rng(0)
    changed = list(texts)
    for index in rng.choice(len(texts), int(len(texts) * CHANGED), replace=False):
        changed[index] = f"{changed[index]} (new edition)"
    incremental, incremental_new = embed(changed)
    stored = sum(p.stat().st_size for p in (cache_dir / encoder.fingerprint).glob("part-*.parquet"))
    rows = len(EmbeddingCache(cache_dir, encoder))
    return {"precision": encoder.precision, "device": str(encoder.device), "dimension": encoder.dimension,
            "sample_items": len(sample), "items_per_s": rate,
            "tuned_over_frozen_time": seconds["tuned"] / seconds["frozen"],
            "catalog_items": len(texts), "distinct_texts": len(set(texts)),
            "cold": {"seconds": cold, "encoded": cold_new},
            "unchanged": {"seconds": warm, "encoded": warm_new},
            "one_percent_changed": {"seconds": incremental, "encoded": incremental_new},
            "cache_rows": rows, "cache_bytes": stored, "cache_bytes_per_item": stored / max(1, rows)}


def _study_query_towers() -> dict[str, str]:
    """The towers study's separate query towers (relevance.student.query_tower), by their layer count."""
    found = {}  # the newest of each layer count
    for manifest in sorted((ROOT / "runs/studies/towers").glob("query-tower-*/model/query_tower.json"),
                           key=lambda p: p.stat().st_mtime):
        found[f"{json.loads(manifest.read_text())['layers']}-layer query tower"] = str(manifest.parent.resolve())
    return found


def query_encoder(sources: dict[str, str], max_length: int, queries: list[str], work: Path, log=print) -> dict:
    """Each encoder (name → model directory: the frozen and tuned towers, separate query towers) exported as a
    serving bundle exports it, then timed on one core over the same queries, interleaved."""
    from relevance.student.encoder import BiEncoder
    from relevance.student.export import export_query_encoder
    from relevance.student.scoring import QueryEncoder

    encoders, graphs = {}, {}
    for name, source in sources.items():
        directory = work / f"{name.replace(' ', '-')}-bundle"
        result = export_query_encoder(source, max_length, directory / "query_encoder.onnx")
        BiEncoder(source, max_length, precision="fp32").tokenizer.save_pretrained(directory / "tokenizer")
        graphs[name] = {"fused": result.fused, "max_abs_diff": result.max_abs_diff,
                        "layers": int(BiEncoder(source, max_length).model.config.num_hidden_layers)}
        encoders[name] = QueryEncoder(directory, max_length, threads=1)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        for encoder in encoders.values():  # warm-up: first runs allocate
            for query in queries[:20]:
                encoder.encode([query])
        times = {name: [] for name in encoders}
        for query in queries:
            for name, encoder in encoders.items():
                begun = time.perf_counter()
                encoder.encode([query])
                times[name].append(time.perf_counter() - begun)
    finally:
        os.sched_setaffinity(0, affinity)
    out = {}
    for name, values in times.items():
        ms = np.array(values) * 1000
        out[name] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                     "mean_ms": float(ms.mean()), **graphs[name]}
    out["tuned_over_frozen_p50"] = out["tuned"]["p50_ms"] / out["frozen"]["p50_ms"]
    for name in sources:
        out[name]["over_tuned_p50"] = out[name]["p50_ms"] / out["tuned"]["p50_ms"]
    log(f"query encoder: {out}")
    return out


def at_scale(catalog: dict) -> dict:
    """The 10M-item catalog on paper, from the measured rate and byte counts (not a run)."""
    # The whole catalog's rate (the sample's is for the frozen/tuned ratio: a few thousand items, interleaved).
    rate = catalog["cold"]["encoded"] / catalog["cold"]["seconds"]
    dimension = catalog["dimension"]
    vector = dimension * 4
    return {
        "items": CATALOG_AT_SCALE, "items_per_s": rate,
        "embed_hours_this_machine": CATALOG_AT_SCALE / rate / 3600,
        # The interleaved sample (two models in turn, the first 2,000 items) ran slower, for reasons not measured:
        # the figure's upper end.
        "embed_hours_at_sample_rate": CATALOG_AT_SCALE / catalog["items_per_s"]["tuned"] / 3600,
        "embed_hours_one_percent_changed": CATALOG_AT_SCALE * CHANGED / rate / 3600,
        "cache_gb": CATALOG_AT_SCALE * catalog["cache_bytes_per_item"] / 1e9,
        "online_vectors_gb_per_version": CATALOG_AT_SCALE * vector / 1e9,
        # Opening the cache reads every part's hash column into a pandas Index of str (~40 hex chars, ~89 B each
        # as Python objects, plus the index's hash table): what a step holds in memory before it embeds anything.
        "cache_hash_index_gb": CATALOG_AT_SCALE * (89 + 16) / 1e9,
    }


def markdown(report: dict) -> str:
    c, q, s = report["catalog"], report["query_encoder"], report["at_scale"]
    lines = [
        "# Tower cost: re-embedding the catalog and the query encoder on a cache miss", "",
        f"Frozen: `{report['frozen']}`; tuned: `{report['tuned']}` (the same MiniLM-L6 architecture, other weights). "
        f"Catalog: Home Depot's {c['catalog_items']:,} items ({c['distinct_texts']:,} distinct texts), the "
        f"student's lexical item text, max length {report['max_length']}; bi-encoder in {c['precision']} on "
        f"{c['device']}.", "",
        "## Catalog embedding, incremental per encoder version", "",
        "| what | items encoded | seconds |", "|---|---|---|",
        f"| new version (empty cache for the tuned tower) | {c['cold']['encoded']:,} | {c['cold']['seconds']:.1f} |",
        f"| same catalog again (all found by content hash) | {c['unchanged']['encoded']:,} | "
        f"{c['unchanged']['seconds']:.1f} |",
        f"| 1% of item texts changed | {c['one_percent_changed']['encoded']:,} | "
        f"{c['one_percent_changed']['seconds']:.1f} |", "",
        f"Rate on the catalog's first {c['sample_items']:,} items, frozen and tuned batches interleaved: frozen "
        f"{c['items_per_s']['frozen']:.0f} items/s, tuned {c['items_per_s']['tuned']:.0f} items/s (tuned / frozen "
        f"time {c['tuned_over_frozen_time']:.2f}); the whole catalog ran at {s['items_per_s']:.0f} items/s. Cache on "
        f"disk: {c['cache_bytes_per_item']:.0f} bytes per item.", "",
        "## Query encoder on a cache miss (ONNX, fused, one core, one query at a time)", "",
        "| encoder | layers | p50 ms | p99 ms | mean ms | p50 / tuned tower's |", "|---|---|---|---|---|---|",
        *(f"| {n} | {q[n].get('layers', 6)} | {q[n]['p50_ms']:.2f} | {q[n]['p99_ms']:.2f} | {q[n]['mean_ms']:.2f} | "
          f"{q[n]['over_tuned_p50']:.2f} |" for n in q if isinstance(q[n], dict)),
        "", f"Tuned / frozen p50: {q['tuned_over_frozen_p50']:.2f} over {report['queries']:,} of the dataset's "
        "queries, interleaved. The tuned tower has the serving cost of the frozen one: the same graph, other weights. "
        "A separate query tower (relevance.student.query_tower: some of the tuned tower's layers, trained into its "
        "space) is what makes a miss cheaper; what it costs in quality is in the towers study "
        "(studies.json `towers.separate_query_tower`).",
        "", "## 10M items, on paper (from the rates and sizes above; not a run)", "",
        f"- Embedding a new version: {s['embed_hours_this_machine']:.1f} h on this machine "
        f"({s['items_per_s']:.0f} items/s, the whole catalog's rate above; "
        f"{s['embed_hours_at_sample_rate']:.1f} h at the interleaved sample's rate); 1% of the texts changed: "
        f"{s['embed_hours_one_percent_changed']:.2f} h. The catalog is embedded a chunk at a time: a job split by "
        "item range over N pods divides the first figure by N.",
        f"- The embedding cache of one version: {s['cache_gb']:.1f} GB of parquet; opening it holds its content "
        f"hashes in memory, about {s['cache_hash_index_gb']:.1f} GB at 10M (a pandas Index of str): a step at "
        "10M items wants a hash index on disk (or int64 hashes) before it wants more cores.",
        f"- Online vectors per version: {s['online_vectors_gb_per_version']:.1f} GB of float32 before Redis's "
        "per-key overhead; a canary whose challenger has a new tower holds two versions (each project its own "
        "keys) until the old one is dropped, so plan the online store for twice that.",
        "", "## Rerun", "", f"    {report['command']}", "",
        f"Machine: {report['machine']}. Date: {report['date']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/homedepot-minilm.yaml"))
    parser.add_argument("--towers", default=None, help="tuned towers (default: the towers study's)")
    parser.add_argument("--query-tower", action="append", default=None,
                        help="a separate query tower to time too (repeatable; default: the towers study's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    from relevance.chain import Chain
    from relevance.config import load_config
    from relevance.models.bm25 import lexical_item_texts

    config = load_config(args.config)
    towers = Path(args.towers) if args.towers else _study_towers()
    dataset = Chain(config).dataset()
    texts = lexical_item_texts(dataset.items, config.text).reindex(dataset.items["item_id"]).fillna("").tolist()
    queries = dataset.queries["query"].astype(str).tolist()[:QUERIES]
    frozen, tuned, length = config.student.encoder, str(towers.resolve()), config.student.encoder_max_length
    query_towers = ({f"query tower {n + 1}": str(Path(p).resolve()) for n, p in enumerate(args.query_tower)}
                    if args.query_tower else _study_query_towers())
    work = Path(tempfile.mkdtemp(prefix="tower-cost-"))
    try:
        report = {"frozen": frozen, "tuned": os.path.relpath(tuned, ROOT), "max_length": length,
                  "queries": len(queries),
                  "query_encoder": query_encoder({"frozen": frozen, "tuned": tuned, **query_towers}, length,
                                                 queries, work),
                  "catalog": catalog_embedding(frozen, tuned, length, texts, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["at_scale"] = at_scale(report["catalog"])
    report.update(command=f".venv/bin/python -m benchmarks.tower_cost --config {os.path.relpath(args.config, ROOT)}"
                          + (f" --towers {args.towers}" if args.towers else "")
                          + "".join(f" --query-tower {p}" for p in args.query_tower or ()),
                  machine=machine(), date=datetime.now(timezone.utc).date().isoformat())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tower-cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "tower-cost.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
