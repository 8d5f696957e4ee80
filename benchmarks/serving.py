"""Serving benchmark: a real `relevance serve` on loopback, pinned to one core, driven by a bounded load generator
on the other core with 100-candidate rerank requests on Home Depot.

    .venv/bin/python -m benchmarks.serving                # configs/homedepot-minilm.yaml; needs runs/homedepot trained
    .venv/bin/python -m benchmarks.serving --requests 500 # shorter

Writes benchmarks/results/serving.json, serving.md and serving-latency.png. Measured:

- latency (p50, p99) at concurrency 1 and throughput (rps) at concurrency 4 for cached-query requests (the query's
  embedding and the candidates' features are in the server's caches) and uncached ones (a query never seen: the
  ONNX encoder runs), with the fp32 and the int8 bundle;
- the query cache's hit rate on Zipf replays (100,000 distinct queries, 10,000 entries), with the best any cache of
  that size can reach (the traffic share of the 10,000 most frequent queries) and LRU for comparison;
- the teacher cross-encoder's time for the same 100 candidates (one core, torch), and the cost ratio;
- the int8 bundle's quality delta on the evaluation split (accuracy and nDCG@20 through the serving path).

Candidates are each query's BM25 top 100 from the bundle's index, as a retrieval stage would send them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from relevance.serving.process import free_port, model_server

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "relevance-student"
CANDIDATES = 100


def ensure_artifacts(config_path: Path) -> None:
    """The serving bundle (with int8 copies) and the materialized feature repo, built once."""
    from relevance.config import load_config

    workdir = ROOT / load_config(config_path).workdir
    cli = [sys.executable, "-m", "relevance.cli"]
    if not (workdir / "export" / "student-int8.onnx").exists():
        subprocess.run([*cli, "export", "-c", str(config_path), "--int8"], check=True, cwd=ROOT)
    if not (workdir / "feature_repo" / "feature_store.yaml").exists():
        subprocess.run([*cli, "features", "-c", str(config_path)], check=True, cwd=ROOT)


class Server:
    """`relevance serve` pinned to one core (taskset), on a free loopback port."""

    def __init__(self, config_path: Path, core: int, log: Path):
        self.port = free_port()
        env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._server = model_server(["serve", "-c", str(config_path)], self.port, log, env,
                                    prefix=["taskset", "-c", str(core)], cwd=ROOT)
        self.url = self._server.__enter__()

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.url}/metrics").text

    def stop(self) -> None:
        self._server.__exit__(None, None, None)


def _body(query: str, candidates: list[str]) -> bytes:
    return json.dumps({"instances": [{"query": query, "locale": "en-US", "candidates": candidates}]}).encode()


def drive(url: str, bodies: list[bytes], concurrency: int) -> tuple[np.ndarray, float]:
    """Send every body once with at most ``concurrency`` in flight (closed loop); latencies (s) and wall time."""
    import httpx

    path = f"{url}/v1/models/{MODEL}:predict"
    latencies = np.zeros(len(bodies))
    errors: list[str] = []
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker():
        with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                started = time.perf_counter()
                response = client.post(path, content=bodies[index])
                latencies[index] = time.perf_counter() - started
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
    return latencies, wall


def _summary(latencies: np.ndarray, rps: float) -> dict:
    return {"p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
            "mean_ms": round(float(latencies.mean()) * 1e3, 3), "rps": round(rps, 1), "requests": len(latencies)}


def measure_server(config_path: Path, queries: list[str], candidates: dict[str, list[str]], requests: int,
                   log: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Cached and uncached 100-candidate requests against one server (core 0; this process on core 1)."""
    server = Server(config_path, core=0, log=log)
    try:
        hot, cold = queries[:200], queries[200:]
        # Warm: the hot queries' embeddings, and every candidate's features (under throwaway query texts, so the
        # cold queries stay unseen).
        warm = [_body(q, candidates[q]) for q in hot] + [_body(f"warm up {n}", candidates[q])
                                                         for n, q in enumerate(cold)]
        drive(server.url, warm, 2)
        rng = np.random.default_rng(0)
        cached = [_body(q, candidates[q]) for q in rng.choice(hot, requests)]
        results, latencies = {}, {}
        lat, _ = drive(server.url, cached, 1)
        _, wall = drive(server.url, cached, 4)
        results["cached"], latencies["cached"] = _summary(lat, len(cached) / wall), lat
        # Uncached: each query text once. Two disjoint halves: one for latency, one for throughput.
        half = min(requests, len(cold) // 2)
        first = [_body(q, candidates[q]) for q in cold[:half]]
        second = [_body(q + " ", candidates[q]) for q in cold[half:2 * half]]  # unseen text, same candidates
        lat, _ = drive(server.url, first, 1)
        _, wall = drive(server.url, second, 4)
        results["uncached"], latencies["uncached"] = _summary(lat, len(second) / wall), lat
        text = server.metrics()
        results["server_query_cache_hit_rate"] = next(
            (float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith("relevance_query_cache_hit_rate{")), None)
    finally:
        server.stop()
    return results, latencies


def zipf_replay(exponent: float, distinct: int = 100_000, cache_size: int = 10_000, requests: int = 1_000_000,
                seed: int = 0) -> dict:
    """Hit rate of the serving query cache (the same factory OnlineScorer uses) on a Zipf(exponent) stream."""
    from relevance.student.scoring import lookup_cache

    ranks = np.arange(1, distinct + 1, dtype=np.float64)
    weights = ranks ** -exponent
    probs = weights / weights.sum()
    stream = np.random.default_rng(seed).choice(distinct, size=requests, p=probs).tolist()
    cache = lookup_cache(cache_size)
    hits = 0
    for key in stream:
        _, hit = cache.get(key)
        if hit:
            hits += 1
        else:
            cache.set(key, True)
    lru, lru_hits = OrderedDict(), 0
    for key in stream:
        if key in lru:
            lru.move_to_end(key)
            lru_hits += 1
        else:
            lru[key] = True
            if len(lru) > cache_size:
                lru.popitem(last=False)
    best = float(probs[:cache_size].sum())
    rate = hits / requests
    return {"exponent": exponent, "distinct_queries": distinct, "cache_size": cache_size, "requests": requests,
            "hit_rate": round(rate, 4), "best_possible": round(best, 4), "fraction_of_best": round(rate / best, 4),
            "lru_hit_rate": round(lru_hits / requests, 4), "lru_fraction_of_best": round(lru_hits / requests / best, 4)}


def teacher_cost(config_path: Path, queries: list[str], candidates: dict[str, list[str]], repeats: int) -> dict:
    """The teacher cross-encoder scoring the same 100 candidates, on one core (torch, fp32 and bf16 autocast)."""
    import torch

    from relevance.chain import Chain
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.teacher.model import Teacher

    torch.set_num_threads(1)
    chain = Chain(load_config(config_path))
    dataset = Dataset.load(chain.data_dir, with_impressions=False)
    teacher = Teacher.load(chain.teacher_dir)
    texts = teacher.item_texts(dataset.items)
    out = {}
    for precision in ("fp32", "bf16"):
        times = []
        for query in queries[:repeats + 1]:
            started = time.perf_counter()
            teacher.predict_proba([query] * CANDIDATES, texts.reindex(candidates[query]).fillna("").tolist(),
                                  batch_size=CANDIDATES, precision=precision)
            times.append(time.perf_counter() - started)
        out[precision] = round(float(np.median(times[1:])) * 1e3, 2)  # the first call warms up
    return {"teacher_ms_per_request_fp32": out["fp32"], "teacher_ms_per_request_bf16": out["bf16"]}


def int8_quality(config_path: Path) -> dict:
    """Accuracy and nDCG@20 on the evaluation split through the serving path (OnlineScorer: ONNX encoder,
    Feast online features, featurizer, ONNX student), fp32 vs int8 bundle."""
    from relevance.chain import Chain
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.evaluation.evaluate import report_block
    from relevance.platform.feature_store import FeastItemSource
    from relevance.student.scoring import OnlineScorer, OnnxStudent, ServingBundle

    config = load_config(config_path)
    dataset = Dataset.load(Chain(config).data_dir, with_impressions=False)
    frame = dataset.split(config.eval.split)
    query_text = dataset.queries.set_index("query_id")["query"]
    bundle = ServingBundle(Path(config.workdir) / "export")
    items = FeastItemSource(Path(config.workdir) / "feature_repo", bundle.manifest["embedding_dim"])
    out = {}
    for int8 in (False, True):
        serving = config.serving.model_copy(update={"int8": int8})
        scorer = OnlineScorer(bundle, items, serving, student=OnnxStudent(bundle.model_file("student", int8)))
        probs = np.zeros((len(frame), dataset.num_grades), dtype=np.float32)
        for query_id, rows in frame.groupby("query_id", sort=False).indices.items():
            ids = frame["item_id"].to_numpy()[rows].tolist()
            prepared = scorer.prepare(query_text[query_id], "", ids)
            probs[rows] = scorer.student.predict(prepared.features)
        overall = report_block(frame, probs, dataset.info, config.eval)["overall"]
        out["int8" if int8 else "fp32"] = {"accuracy": round(overall["accuracy"], 4),
                                           "ndcg@20": round(overall["ndcg@20"], 4)}
    out["delta"] = {k: round(out["int8"][k] - out["fp32"][k], 4) for k in ("accuracy", "ndcg@20")}
    out["split"], out["pairs"] = config.eval.split, int(len(frame))
    return out


def plot(latencies: dict[str, dict[str, np.ndarray]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(latencies), figsize=(6 * len(latencies), 3.8), sharey=True)
    for ax, (variant, series) in zip(np.atleast_1d(axes), latencies.items()):
        top = max(np.percentile(s, 99.5) for s in series.values()) * 1e3
        bins = np.linspace(0, top, 60)
        for name, values in series.items():
            ax.hist(np.clip(values * 1e3, 0, top), bins=bins, alpha=0.6,
                    label=f"{name}: p50 {np.percentile(values, 50) * 1e3:.2f} ms, "
                          f"p99 {np.percentile(values, 99) * 1e3:.2f} ms")
        ax.axvline(3, color="k", linestyle="--", linewidth=0.8)
        ax.axvline(10, color="k", linestyle=":", linewidth=0.8)
        ax.set_title(f"{variant} bundle, 100-candidate rerank, 1 server core")
        ax.set_xlabel("latency (ms); dashed: 3 ms p50 target, dotted: 10 ms p99 target")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("requests")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def markdown(report: dict) -> str:
    lines = [f"# Serving benchmark ({report['dataset']}, {CANDIDATES}-candidate rerank requests)", "",
             f"- Command: `{report['command']}`",
             f"- Machine: {report['machine']}", f"- Date: {report['date']}",
             "- Server: `relevance serve` (KServe model server, V1 endpoint, in-process ONNX Runtime student), "
             "pinned to **1 core** with taskset; load generator (httpx, keep-alive) on the other core. Latency at "
             "concurrency 1, rps at concurrency 4. Cached: the query embedding and the candidates' features are in "
             "the server's caches; uncached: a query never seen, so the ONNX encoder runs.", "",
             "| bundle | requests | p50 ms | p99 ms | rps |", "|---|---|---|---|---|"]
    for variant, results in report["server"].items():
        for kind in ("cached", "uncached"):
            r = results[kind]
            lines.append(f"| {variant} | {kind} | {r['p50_ms']} | {r['p99_ms']} | {r['rps']} |")
    lines += ["", "![latency histogram](serving-latency.png)", "",
              "## Query-embedding cache on Zipf replays", "",
              "W-TinyLFU (theine), the cache `relevance serve` uses; LRU for comparison. Best possible: the traffic "
              "share of the 10,000 most frequent queries.", "",
              "| Zipf exponent | hit rate | best possible | fraction of best | LRU hit rate | LRU fraction |",
              "|---|---|---|---|---|---|"]
    for r in report["cache_hit_rate"]:
        lines.append(f"| {r['exponent']} | {r['hit_rate']} | {r['best_possible']} | {r['fraction_of_best']} | "
                     f"{r['lru_hit_rate']} | {r['lru_fraction_of_best']} |")
    q = report["int8_quality"]
    lines += ["", "## Student vs teacher cost", "",
              f"- Teacher (MiniLM-L6 cross-encoder, torch, 1 thread) on the same 100 candidates: "
              f"**{report['teacher_ms_per_request']} ms** fp32, {report['teacher_ms_per_request_bf16']} ms bf16.",
              f"- Student request (cached p50, fp32 bundle, end to end over HTTP): "
              f"{report['server']['fp32']['cached']['p50_ms']} ms → "
              f"**student_vs_teacher_cost_ratio {report['student_vs_teacher_cost_ratio']}×** "
              f"({report['student_vs_teacher_cost_ratio_uncached']}× for uncached queries).",
              f"- Each at its fastest on this CPU (teacher bf16 autocast, student int8 bundle): "
              f"{report['teacher_ms_per_request_bf16']} / {report['server']['int8']['cached']['p50_ms']} ms = "
              f"**{report['student_vs_teacher_cost_ratio_fastest_each']}×**. The teacher here is MiniLM-L6 "
              "(22M parameters); an LLM teacher costs orders of magnitude more per pair.", "",
              "## int8 quality through the serving path", "",
              f"{q['pairs']} {q['split']} pairs, scored by OnlineScorer (ONNX encoder, Feast online features, the "
              "training featurizer, ONNX student).", "",
              "| bundle | accuracy | nDCG@20 |", "|---|---|---|",
              f"| fp32 | {q['fp32']['accuracy']} | {q['fp32']['ndcg@20']} |",
              f"| int8 (per-channel dynamic, student + encoder) | {q['int8']['accuracy']} | {q['int8']['ndcg@20']} |",
              f"| delta | {q['delta']['accuracy']:+} | {q['delta']['ndcg@20']:+} |", "",
              "## Targets", ""]
    for name, met in report["targets"].items():
        lines.append(f"- {'met' if met else '**missed**'}: {name}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "homedepot-minilm.yaml")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--teacher-repeats", type=int, default=10)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})  # the load generator's core; the server gets core 0

    from relevance.chain import Chain
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.models.bm25 import BM25Index

    ensure_artifacts(args.config)
    config = load_config(args.config)
    dataset = Dataset.load(Chain(config).data_dir, with_impressions=False)
    index = BM25Index.load(Path(config.workdir) / "export" / "bm25")
    pool = dataset.queries["query"].drop_duplicates().sample(frac=1.0, random_state=0).tolist()
    queries, candidates = [], {}
    for query in pool:
        ids, _ = index.top_k(query, CANDIDATES)
        if len(ids) == CANDIDATES:
            queries.append(query)
            candidates[query] = ids.tolist()
        if len(queries) >= 200 + 2 * args.requests:
            break
    print(f"{len(queries)} queries with {CANDIDATES} BM25 candidates", flush=True)

    server, latencies = {}, {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with_int8 = Path(tempfile.mkdtemp()) / f"{args.config.stem}-int8.yaml"  # same settings, serving.int8 on
    overrides = yaml.safe_load(args.config.read_text())
    overrides.setdefault("serving", {})["int8"] = True
    with_int8.write_text(yaml.safe_dump(overrides))
    try:
        for variant, path in (("fp32", args.config), ("int8", with_int8)):
            print(f"server ({variant})…", flush=True)
            server[variant], latencies[variant] = measure_server(path, queries, candidates, args.requests,
                                                                 Path(f"/tmp/serving-bench-{variant}.log"))
            print(json.dumps(server[variant]), flush=True)
    finally:
        with_int8.unlink(missing_ok=True)
    print("cache replays…", flush=True)
    replays = [zipf_replay(1.0), zipf_replay(1.2)]
    print("teacher…", flush=True)
    teacher = teacher_cost(args.config, queries, candidates, args.teacher_repeats)
    print("int8 quality…", flush=True)
    quality = int8_quality(args.config)
    teacher_ms = teacher["teacher_ms_per_request_fp32"]
    fp32 = server["fp32"]
    report = {
        "dataset": dataset.info.name,
        "command": "make bench-serving  (= .venv/bin/python -m benchmarks.serving "
                   f"--config {args.config} --requests {args.requests})",
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores "
                   f"(server pinned to 1); Python {platform.python_version()}".replace("  ", " "),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "candidates_per_request": CANDIDATES,
        "p50_ms": fp32["cached"]["p50_ms"], "p99_ms": fp32["cached"]["p99_ms"], "rps": fp32["cached"]["rps"],
        "uncached": {k: fp32["uncached"][k] for k in ("p50_ms", "p99_ms", "rps")},
        "server": server,
        "cache_hit_rate": replays,
        "teacher_ms_per_request": teacher_ms,
        "teacher_ms_per_request_bf16": teacher["teacher_ms_per_request_bf16"],
        "student_ms_per_request": fp32["cached"]["p50_ms"],
        # Same precision on both sides (fp32), the student end to end over HTTP, the teacher in process.
        "student_vs_teacher_cost_ratio": round(teacher_ms / fp32["cached"]["p50_ms"], 1),
        "student_vs_teacher_cost_ratio_uncached": round(teacher_ms / fp32["uncached"]["p50_ms"], 1),
        # Each at its fastest on this CPU: teacher bf16 autocast, student int8 bundle.
        "student_vs_teacher_cost_ratio_fastest_each": round(
            teacher["teacher_ms_per_request_bf16"] / server["int8"]["cached"]["p50_ms"], 1),
        "int8_quality": quality,
    }
    int8 = server["int8"]["cached"]
    report["targets"] = {
        "cached p50 <= 3 ms on 1 core (fp32 bundle)": fp32["cached"]["p50_ms"] <= 3,
        "cached p50 <= 3 ms on 1 core (int8 bundle)": int8["p50_ms"] <= 3,
        "cached p99 <= 10 ms on 1 core (fp32 and int8)": max(fp32["cached"]["p99_ms"], int8["p99_ms"]) <= 10,
        "cache hit rate >= 95% of best (Zipf 1.0 and 1.2)": all(r["fraction_of_best"] >= 0.95 for r in replays),
        "student >= 100x cheaper than the teacher (both fp32)": report["student_vs_teacher_cost_ratio"] >= 100,
        "student >= 100x cheaper than the teacher (each at its fastest: bf16 teacher, int8 student)":
            report["student_vs_teacher_cost_ratio_fastest_each"] >= 100,
    }
    (RESULTS / "serving.json").write_text(json.dumps(report, indent=2))
    plot(latencies, RESULTS / "serving-latency.png")
    (RESULTS / "serving.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
