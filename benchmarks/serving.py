"""Serving benchmark: real servers on loopback, pinned to one core, driven by a bounded load generator on the other
core with 100-candidate rerank requests on Home Depot.

    .venv/bin/python -m benchmarks.serving                # configs/homedepot-minilm.yaml; needs runs/homedepot trained
    .venv/bin/python -m benchmarks.serving --requests 500 # shorter

Writes benchmarks/results/serving.json, serving.md and serving-latency.png. Measured:

- where a request's time goes, in process on one core: Feast lookup (cached), BM25, lexical features, the query
  encoder (a cache miss), the student's serving graph, ranking and the response;
- latency (p50, p99) at concurrency 1 and throughput (rps) at concurrency 4, cached-query requests (the query's
  embedding and the candidates' features are in the server's caches) and uncached ones (a query never seen: the
  ONNX encoder runs), fp32 and int8 bundles, along three paths: `relevance serve` with the student in process;
  `relevance serve --predictor-url` in front of a real Triton Inference Server over HTTP; the same over gRPC (the
  transformer and Triton share the one core); and KServe's floor, a model that answers the same request with a
  canned response (benchmarks.kserve_floor). All are up at once and measured in interleaved rounds (--rounds),
  so a drift in this shared machine's speed falls on every row alike;
- the query cache's hit rate on Zipf replays (100,000 distinct queries, 10,000 entries), with the best any cache of
  that size can reach (the traffic share of the 10,000 most frequent queries) and LRU for comparison;
- the teacher cross-encoder's time for the same 100 candidates (one core, torch), and the cost ratio;
- quality through the serving path (fp32 and int8) against the exported student scored offline.

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
from types import SimpleNamespace

import numpy as np
import yaml

from relevance.serving.process import free_port, model_server

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "relevance-student"
CANDIDATES = 100


def ensure_artifacts(config_path: Path) -> None:
    """The serving bundle (with int8 copies) of the run's current student and the materialized feature repo."""
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.platform.feature_store import built_encoder
    from relevance.student.scoring import ONE_QUERY_GRAPH, ServingBundle

    workdir = ROOT / load_config(config_path).workdir
    cli = [sys.executable, "-m", "relevance.cli"]
    try:
        bundle = ServingBundle(workdir / "export")
        current = (bundle.manifest["student_version"] == read_manifest(workdir / "student")["student_version"]
                   and (workdir / "export" / "student-int8.onnx").exists()
                   and "query_encoder_graph" in bundle.manifest  # exported before the encoder was fused: again
                   and bundle.in_process_graph(False).stem == ONE_QUERY_GRAPH)  # … or the one-query graph
    except (FileNotFoundError, ValueError):  # none yet, or exported by an older version
        current = False
    repo = workdir / "feature_repo"
    # None yet, built before embedding versions, or another item tower's (towers tuned since): build it again.
    if not (repo / "embedding.json").exists() or (built_encoder(repo) != read_manifest(workdir / "student", "student")
                                                  ["encoder_fingerprint"]):
        subprocess.run([*cli, "features", "-c", str(config_path)], check=True, cwd=ROOT)
        current = False  # the bundle names the features' (new) project
    if not current:
        subprocess.run([*cli, "export", "-c", str(config_path), "--int8"], check=True, cwd=ROOT)


ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
SERVER_CORE = 0


class Server:
    """A serving path on one core (taskset): `relevance serve` in process, or in front of a real Triton on the
    same core (``predictor``: "http" or "grpc")."""

    def __init__(self, config_path: Path, log: Path, predictor: str | None = None):
        from contextlib import ExitStack

        self._stack = ExitStack()
        pin = ["taskset", "-c", str(SERVER_CORE)]
        args = ["serve", "-c", str(config_path)]
        try:
            if predictor:
                from relevance.config import load_config
                from relevance.serving.model_repository import build_model_repository
                from relevance.serving.triton import triton_server

                config = load_config(config_path)
                repo = Path(tempfile.mkdtemp()) / "repository"
                build_model_repository(ROOT / config.workdir / "export", repo, config.serving, backend="python")
                triton = self._stack.enter_context(triton_server(repo, repo.parent, log.with_suffix(".triton.log"),
                                                                 prefix=pin))
                args += ["--predictor-url", triton.http_url if predictor == "http" else triton.grpc_url]
            self.url = self._stack.enter_context(model_server(args, free_port(), log, ENV, prefix=pin, cwd=ROOT))
        except BaseException:
            self._stack.close()
            raise

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.url}/metrics").text

    def stop(self) -> None:
        self._stack.close()


class FloorServer(Server):
    """benchmarks.kserve_floor on the servers' core: KServe answering the same request without a model (its own
    process, not `relevance serve`: Server's set-up does not apply)."""

    def __init__(self, log: Path):
        from relevance.common.processes import LoopbackProcess, free_port
        from relevance.serving.process import v2_ready

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = LoopbackProcess("KServe floor", ["taskset", "-c", str(SERVER_CORE), sys.executable, "-m",
                                                        "benchmarks.kserve_floor", "--http_port", str(port)],
                                       log, v2_ready(self.url), env=ENV, cwd=ROOT)
        self.process.start()

    def metrics(self) -> str:
        return ""

    def stop(self) -> None:
        self.process.stop()


def _body(query: str, candidates: list[str]) -> bytes:
    return json.dumps({"instances": [{"query": query, "locale": "en-US", "candidates": candidates}]}).encode()


def drive(url: str, bodies: list[bytes], concurrency: int) -> tuple[np.ndarray, float]:
    """Send every body once with at most ``concurrency`` in flight (closed loop); latencies (s) and wall time.

    Each worker keeps one connection open with the standard library's http.client: the thinnest Python client,
    so the latency is the server's and the network's, not a client library's (httpx added 0.3 to 2.5 ms a
    request here, varying from run to run)."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(url)
    path = f"/v1/models/{MODEL}:predict"
    latencies = np.zeros(len(bodies))
    errors: list[str] = []
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker():
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        try:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                started = time.perf_counter()
                try:
                    connection.request("POST", path, body=bodies[index],
                                       headers={"content-type": "application/json"})
                    response = connection.getresponse()
                    text = response.read()
                except (OSError, http.client.HTTPException) as error:  # counted, never a silent 0 ms
                    errors.append(f"{type(error).__name__}: {error}")
                    connection.close()
                    continue
                latencies[index] = time.perf_counter() - started
                if response.status != 200:
                    errors.append(f"{response.status} {text[:200]!r}")
        finally:
            connection.close()

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


def _share(items: list, parts: int, part: int) -> list:
    """The ``part``-th of ``parts`` near-equal consecutive slices of ``items``."""
    return items[len(items) * part // parts:len(items) * (part + 1) // parts]


def measure_servers(setups: dict[str, tuple[Path | None, str | None]], queries: list[str],
                    candidates: dict[str, list[str]], requests: int, rounds: int,
                    logs: Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Cached and uncached 100-candidate requests against every serving path (``setups``: name → (config,
    predictor)), all up at once on core 0 (this process on core 1), measured in ``rounds`` rounds that visit the
    paths in a new random order each time. These machines are shared and their speed drifts over minutes: paths
    measured one after the other differed by 2× for the same work, so each path's share of a drift is spread
    over the whole run, and the rows of one run compare. Reported per path: p50 / p99 / mean over all its
    requests, the spread of its per-round p50s, and rps at concurrency 4 (requests over the wall time summed
    over rounds)."""
    from contextlib import ExitStack

    hot, cold = queries[:200], queries[200:]
    if requests < rounds or len(cold) < 2 * rounds:
        raise ValueError(f"--requests {requests} with {len(cold)} unseen queries cannot fill {rounds} rounds: "
                         "give at least one request and two unseen queries per round")
    rng = np.random.default_rng(0)
    cached = [_body(q, candidates[q]) for q in rng.choice(hot, requests)]
    half = min(requests, len(cold) // 2)
    # Uncached: each query text once per server; one half for latency, the other (unseen texts, the same
    # candidates) for throughput.
    uncached = {"latency": [_body(q, candidates[q]) for q in cold[:half]],
                "rps": [_body(q + " ", candidates[q]) for q in cold[half:2 * half]]}
    warm = [_body(q, candidates[q]) for q in hot] + [_body(f"warm up {n}", candidates[q])
                                                     for n, q in enumerate(cold)]
    latencies = {name: {"cached": [], "uncached": []} for name in setups}
    per_round = {name: {"cached": [], "uncached": []} for name in setups}
    walls = {name: {"cached": 0.0, "uncached": 0.0} for name in setups}
    sent = {name: {"cached": 0, "uncached": 0} for name in setups}
    with ExitStack() as stack:
        servers = {}
        for name, (config_path, predictor) in setups.items():
            print(f"start {name}…", flush=True)
            log = logs / f"serving-bench-{predictor or 'local'}-{config_path.stem if config_path else 'floor'}.log"
            server = FloorServer(log) if config_path is None else Server(config_path, log, predictor)
            stack.callback(server.stop)
            # Warm: the hot queries' embeddings, and every candidate's features (under throwaway query texts, so
            # the cold queries stay unseen).
            drive(server.url, warm, 2)
            servers[name] = server
        for round_ in range(rounds):
            order = list(setups)
            rng.shuffle(order)
            for name in order:
                url = servers[name].url
                for kind, latency_bodies, rps_bodies in (
                        ("cached", _share(cached, rounds, round_), _share(cached, rounds, round_)),
                        ("uncached", _share(uncached["latency"], rounds, round_),
                         _share(uncached["rps"], rounds, round_))):
                    if name == FLOOR and kind == "uncached":  # the floor computes nothing: no cache to miss
                        continue
                    lat, _ = drive(url, latency_bodies, 1)
                    _, wall = drive(url, rps_bodies, 4)
                    latencies[name][kind].append(lat)
                    per_round[name][kind].append(float(np.percentile(lat, 50)) * 1e3)
                    walls[name][kind] += wall
                    sent[name][kind] += len(rps_bodies)
            print(f"round {round_ + 1}/{rounds}: " + ", ".join(
                f"{name} {per_round[name]['cached'][-1]:.2f}" for name in setups) + " ms cached p50", flush=True)
        results = {}
        for name in setups:
            results[name] = {}
            for kind in ("cached", "uncached"):
                if not latencies[name][kind]:  # the floor's uncached
                    latencies[name][kind] = np.zeros(0)
                    continue
                lat = np.concatenate(latencies[name][kind])
                results[name][kind] = {**_summary(lat, sent[name][kind] / walls[name][kind]),
                                       "round_p50_ms": [round(v, 3) for v in per_round[name][kind]]}
                latencies[name][kind] = lat
            text = servers[name].metrics()
            results[name]["server_query_cache_hit_rate"] = next(
                (float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("relevance_query_cache_hit_rate{")), None)
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


def _timed(function, requests: list, repeats: int) -> float:
    """p50 (ms) of ``function(request)`` over ``repeats`` calls cycling through ``requests``, after a warm-up.

    Cycling matters: one request repeated keeps its candidates' features in the CPU's caches, which a server
    answering many queries does not (the lexical block took 0.15 ms repeated and 0.41 ms cycled over 200
    queries, before it counted by key)."""
    for request in requests[:10]:
        function(request)
    times = np.zeros(repeats)
    for n in range(repeats):
        request = requests[n % len(requests)]
        started = time.perf_counter()
        function(request)
        times[n] = time.perf_counter() - started
    return round(float(np.percentile(times, 50)) * 1e3, 4)


def profile_misses(scorer, items, fresh: list[str], candidates: dict[str, list[str]], per_stage: int = 300) -> dict:
    """Where a cache miss's time goes: each stage's p50 (ms) over ``per_stage`` query texts never seen before, each
    run once. A text seen once is cached (its embedding in the query cache, its lexical side in the featurizer's),
    so a miss cannot be repeated; each stage gets texts of its own, one after the other, as the servers' uncached
    requests come. The candidates' features (item vectors, and the lexical features' item sides) are cached first,
    as the servers hold them from warm-up."""
    from relevance.student.featurizer import lexical_features
    from relevance.student.scoring import rank

    per_stage = min(per_stage, len(fresh) // 5)  # five stages, each on texts of its own
    if per_stage < 20:
        raise ValueError(f"the miss profile needs at least 100 unseen queries, got {len(fresh)}: give more requests")
    fresh = fresh[:5 * per_stage]
    for n, query in enumerate(fresh):  # as the servers are warmed: every candidate's features, under throwaway texts
        scorer.prepare(f"warm up {n}", "", candidates[query])
    texts = iter(fresh)

    def once(function, needs_bm25: bool = False) -> float:
        times = []
        for _ in range(per_stage):
            query = next(texts)
            ids = candidates[query]
            found = items.get(ids)
            # The lexical stage's BM25 input, scored outside its timing (BM25 has its own stage, on texts unscored)
            bm25 = scorer.bm25.score_items(query, ids) if needs_bm25 else None
            started = time.perf_counter()
            function(query, ids, found, bm25)
            times.append(time.perf_counter() - started)
        return round(float(np.percentile(times, 50)) * 1e3, 4)

    return {
        "query encoder (tokenizer + ONNX)": once(lambda q, ids, found, bm25: scorer.encoder.encode([q])),
        "BM25 of the candidates": once(lambda q, ids, found, bm25: scorer.bm25.score_items(q, ids)),
        "lexical features (the query's side computed)": once(
            lambda q, ids, found, bm25: lexical_features([q] * len(ids), found.texts, found.titles, bm25), True),
        "prepare: validation + the above + the query cache's insert": once(
            lambda q, ids, found, bm25: scorer.prepare(q, "", ids)),
        "prepare + student graph fp32 + rank (the request's work)": once(
            lambda q, ids, found, bm25: rank(p := scorer.prepare(q, "", ids),
                                             scorer.student.predict(p.student_inputs()))),
    }


def training_vector_graph(student_dir: Path, out: Path) -> Path:
    """For comparison only: the same student exported as it was before the serving graph, on the training vector
    [N, 4·d + 12] (standardise → MLP → calibrated softmax), what the transformer used to send per candidate."""
    import torch

    from relevance.student.model import Student

    student = Student.load(student_dir)
    module = torch.nn.Sequential(student.model, torch.nn.Softmax(-1)).eval()
    sample = torch.zeros(2, student.model.feature_mean.shape[0])
    torch.onnx.export(module, (sample,), str(out), dynamo=False, input_names=["features"], output_names=["probs"],
                      opset_version=17, dynamic_axes={"features": {0: "batch"}, "probs": {0: "batch"}})
    return out


def profile_request(config_path: Path, queries: list[str], candidates: dict[str, list[str]],
                    repeats: int = 1000) -> dict:
    """Where a 100-candidate request's time goes, in process on the server's core: each stage's p50 (ms), cycling
    through the hot queries' requests as the server does."""
    import orjson

    from relevance.common.onnx_session import onnx_session
    from relevance.config import load_config
    from relevance.platform.item_source import FeastItemSource
    from relevance.student.featurizer import assemble, lexical_features
    from relevance.student.scoring import OnlineScorer, OnnxStudent, ServingBundle, rank

    config = load_config(config_path)
    workdir = ROOT / config.workdir
    bundle = ServingBundle(workdir / "export")
    items = FeastItemSource.for_bundle(workdir / "feature_repo", bundle.manifest)
    scorer = OnlineScorer(bundle, items, config.serving, student=OnnxStudent(bundle.in_process_graph(False)))
    batched, int8 = (OnnxStudent(bundle.model_file("student", q)) for q in (False, True))  # Triton's graph
    before = onnx_session(training_vector_graph(workdir / "student", Path(tempfile.mkdtemp()) / "before.onnx"), 1)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {SERVER_CORE})
    try:
        # The server's hot set: the first 200 queries (benchmarks.serving.measure_servers' cached requests), their
        # candidates' features cached and every stage's inputs made ahead, so each stage alone is timed.
        requests = []
        for query in queries[:200]:
            ids = candidates[query]
            prepared = scorer.prepare(query, "", ids)
            found = items.get(ids)
            rows = np.repeat(prepared.query_embedding[None], len(ids), 0)
            requests.append(SimpleNamespace(query=query, ids=ids, prepared=prepared, found=found,
                                            bm25=scorer.bm25.score_items(query, ids),
                                            probs=scorer.student.predict(prepared.student_inputs()),
                                            vector=assemble(rows, prepared.item_embeddings, prepared.lexical)))
        stages = {
            "Feast lookup (item cache hit)": _timed(lambda r: items.get(r.ids), requests, repeats),
            "BM25 of the candidates": _timed(lambda r: scorer.bm25.score_items(r.query, r.ids), requests, repeats),
            "lexical features": _timed(lambda r: lexical_features([r.query] * len(r.ids), r.found.texts,
                                                                  r.found.titles, r.bm25), requests, repeats),
            "query encoder (a cache miss only)": _timed(lambda r: scorer.encoder.encode([r.query]), requests,
                                                        repeats),
            "prepare: validation + the above, query cached": _timed(lambda r: scorer.prepare(r.query, "", r.ids),
                                                                    requests, repeats),
            "student graph fp32 (one-query graph: in process)": _timed(
                lambda r: scorer.student.predict(r.prepared.student_inputs()), requests, repeats),
            "student graph fp32 (query row once, Triton's graph)": _timed(
                lambda r: batched.predict(r.prepared.student_inputs()), requests, repeats),
            "student graph fp32 (query row per candidate: Triton's inputs)": _timed(
                lambda r: batched.predict(r.prepared.student_inputs(per_candidate=True)), requests, repeats),
            "student graph int8 (query row once)": _timed(lambda r: int8.predict(r.prepared.student_inputs()),
                                                          requests, repeats),
            "before: graph on the training vector, fp32": _timed(
                lambda r: before.run(["probs"], {"features": r.vector}), requests, repeats),
            "rank": _timed(lambda r: rank(r.prepared, r.probs), requests, repeats),
            "rank + V1 response body (orjson, as KServe's V1 endpoint)": _timed(
                lambda r: orjson.dumps({"predictions": [rank(r.prepared, r.probs).to_dict()]}), requests, repeats),
        }
        prepared, vector = requests[0].prepared, requests[0].vector
        misses = profile_misses(scorer, items, queries[200:], candidates)
    finally:
        os.sched_setaffinity(0, affinity)
    dimension = int(bundle.manifest["embedding_dim"])
    lexical_width = prepared.lexical.shape[1]
    return {"stages_p50_ms": stages, "miss_stages_p50_ms": misses, "student_hidden": read_student_hidden(workdir),
            "floats_per_candidate": {"before (training vector)": int(vector.shape[1]),
                                     "serving graph (query, item, lexical)": 2 * dimension + lexical_width},
            "triton_payload_bytes_per_request": {
                "before (training vector)": int(vector.shape[1]) * 4 * CANDIDATES,
                "serving graph (query, item, lexical)": (2 * dimension + lexical_width) * 4 * CANDIDATES}}


def read_student_hidden(workdir: Path) -> list[int]:
    from relevance.common.files import read_manifest

    return list(read_manifest(workdir / "student")["config"]["hidden"])


def student_encoders(workdir: Path) -> dict:
    """What the served student embeds items and queries with (its manifest's encoders; a distilled query tower's
    layers)."""
    from relevance.common.files import read_manifest
    from relevance.student.encoder import QUERY_TOWER_MANIFEST

    manifest = read_manifest(workdir / "student", "student")
    query = manifest.get("query_encoder")
    made = Path(query) / QUERY_TOWER_MANIFEST if query else None
    layers = json.loads(made.read_text()).get("layers") if made is not None and made.exists() else None

    def shown(name: str) -> str:  # a path inside the checkout, relative to it (a backbone's name as it is)
        return str(Path(name).relative_to(ROOT)) if Path(name).is_absolute() and Path(name).is_relative_to(ROOT) \
            else name

    return {"item": shown(manifest["encoder"]), "query": shown(query or manifest["encoder"]),
            "query_tower_layers": layers}


def serving_quality(config_path: Path) -> dict:
    """Accuracy and nDCG@20 on the evaluation split through the serving path (OnlineScorer: ONNX encoder,
    Feast online features, the training featurizer's lexical block, the student's serving graph), fp32 and int8,
    against the exported student scored offline (torch, the training featurizer)."""
    from relevance.chain import Chain
    from relevance.config import load_config
    from relevance.data.schema import Dataset
    from relevance.evaluation.evaluate import load_scorer, report_block
    from relevance.platform.item_source import FeastItemSource
    from relevance.student.scoring import OnlineScorer, OnnxStudent, ServingBundle

    config = load_config(config_path)
    chain = Chain(config)
    dataset = Dataset.load(chain.data_dir, with_impressions=False)
    frame = dataset.split(config.eval.split)
    query_text = dataset.queries.set_index("query_id")["query"]
    bundle = ServingBundle(Path(config.workdir) / "export")
    items = FeastItemSource.for_bundle(Path(config.workdir) / "feature_repo", bundle.manifest)

    def metrics(probs: np.ndarray) -> dict:
        overall = report_block(frame, probs, dataset.info, config.eval)["overall"]
        return {"accuracy": round(overall["accuracy"], 4), "ndcg@20": round(overall["ndcg@20"], 4)}

    offline = load_scorer(chain.student_dirs["student"], dataset.items, chain.embeddings_dir).score(frame, query_text)
    out = {"trained student (torch), offline": metrics(offline.probs)}
    for int8 in (False, True):
        serving = config.serving.model_copy(update={"int8": int8})
        scorer = OnlineScorer(bundle, items, serving, student=OnnxStudent(bundle.in_process_graph(int8)))
        probs = np.zeros((len(frame), dataset.num_grades), dtype=np.float32)
        for query_id, rows in frame.groupby("query_id", sort=False).indices.items():
            ids = frame["item_id"].to_numpy()[rows].tolist()
            prepared = scorer.prepare(query_text[query_id], "", ids)
            probs[rows] = scorer.student.predict(prepared.student_inputs())
        out["serving path, " + ("int8" if int8 else "fp32")] = metrics(probs)
    reference = out["trained student (torch), offline"]
    out["delta"] = {name: {k: round(v[k] - reference[k], 4) for k in ("accuracy", "ndcg@20")}
                    for name, v in out.items() if name.startswith("serving path")}
    out["split"], out["pairs"] = config.eval.split, int(len(frame))
    return out


# KServe answering the same request with a canned response (benchmarks.kserve_floor): not a serving path.
FLOOR = "KServe floor (no model) -"
PATHS = {"in process": None, "transformer → Triton (HTTP)": "http", "transformer → Triton (gRPC)": "grpc"}


def plot(latencies: dict[str, dict[str, np.ndarray]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in latencies if name != FLOOR] + [FLOOR]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(names) + 2.5), sharey=True)
    for ax, kind in zip(axes, ("cached", "uncached")):
        series = [latencies[name][kind] * 1e3 for name in names]
        shown = [n for n, values in enumerate(series) if len(values)]  # the floor has no uncached requests
        ax.boxplot([series[n] for n in shown], positions=[n + 1 for n in shown], vert=False, whis=(1, 99),
                   showfliers=False)
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        ax.axvline(1.5 if kind == "cached" else 4, color="k", linestyle="--", linewidth=0.8)
        ax.set_title(f"{kind} query, 100-candidate rerank, 1 server core (box: p25–p75, whiskers p1–p99)",
                     fontsize=9)
        ax.set_xlabel("latency (ms); dashed: the p50 target" + (" in process" if kind == "cached" else ""))
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def markdown(report: dict) -> str:
    profile = report["profile"]
    lines = [f"# Serving benchmark ({report['dataset']}, {CANDIDATES}-candidate rerank requests)", "",
             f"- Command: `{report['command']}`",
             f"- Machine: {report['machine']}", f"- Date: {report['date']}",
             f"- Student: MLP {profile['student_hidden']} "
             + (f"({report['about']}), " if report.get("about") else
                "(chosen on valid by the Pareto study in report.html), ")
             + "served as its serving graph (relevance.student.export: interactions in the graph, the query's share of "
             "the first layer once per request; in process, the one-query graph, whose item side meets one weight "
             "built per request)."
             + (" Items embedded by `{item}`, queries by `{query}`{layers}.".format(
                 **report["student_encoders"], layers=(f" (a {report['student_encoders']['query_tower_layers']}-layer "
                                                       "query tower)" if report["student_encoders"]
                                                       ["query_tower_layers"] else ""))
                if report.get("student_encoders") else ""),
             "- Servers pinned to **1 core** with taskset (the transformer and Triton share it); load generator "
             "(http.client, keep-alive, V1 JSON) on the other core. Latency at concurrency 1, rps at concurrency 4. "
             "Cached: the query embedding and the candidates' features are in the server's caches; uncached: a "
             "query never seen, so the ONNX query encoder runs. Triton: the real tritonserver 2.51 (nvidia-pytriton "
             "wheel), Python backend running the same ONNX graph with ONNX Runtime.", "",
             "## Where a request's time goes (in process, one core, p50 per stage, cycling through the 200 hot "
             "queries)", "",
             "| stage | p50 ms |", "|---|---|"]
    lines += [f"| {stage} | {ms} |" for stage, ms in profile["stages_p50_ms"].items()]
    if "miss_stages_p50_ms" in profile:
        lines += ["", "A cache miss, stage by stage (in process, one core, p50 over up to 300 query texts never seen "
                  "before for each stage, each run once: a text seen once is cached):", "",
                  "| stage (a new query) | p50 ms |", "|---|---|"]
        lines += [f"| {stage} | {ms} |" for stage, ms in profile["miss_stages_p50_ms"].items()]
    floats, payload = profile["floats_per_candidate"], profile["triton_payload_bytes_per_request"]
    lines += ["", "Per candidate the transformer now sends " + " vs ".join(f"{v} floats ({k})" for k, v in
                                                                       reversed(floats.items()))
              + "; a 100-candidate request to Triton carries " + " vs ".join(
                  f"{v / 1024:.0f} KiB ({k})" for k, v in reversed(payload.items())) + " of tensors.", "",
              "## End to end", "",
              f"All paths were up at once and measured in {report['rounds']} interleaved rounds (a new random order "
              "each round), so a drift in the machine's speed falls on every row alike. p50 / p99 over all of a "
              "row's requests; rounds: the lowest and highest of its per-round p50s.", "",
              "| path | bundle | requests | p50 ms | p99 ms | rounds' p50 ms | rps (concurrency 4) |",
              "|---|---|---|---|---|---|---|"]
    for name, results in report["server"].items():
        for kind in ("cached", "uncached"):
            if name == FLOOR and kind == "uncached":  # the floor computes nothing: no cache to miss
                continue
            r = results[kind]
            spread = f"{min(r['round_p50_ms']):.2f}–{max(r['round_p50_ms']):.2f}"
            lines.append(f"| {name.rsplit(' ', 1)[0]} | {name.rsplit(' ', 1)[1]} | {kind} | {r['p50_ms']} | "
                         f"{r['p99_ms']} | {spread} | {r['rps']} |")
    stages = profile["stages_p50_ms"]
    work = (stages["prepare: validation + the above, query cached"]
            + stages["student graph fp32 (one-query graph: in process)"]
            + stages["rank + V1 response body (orjson, as KServe's V1 endpoint)"])
    local = report["server"]["in process fp32"]["cached"]["p50_ms"]
    floor = report["server"][FLOOR]["cached"]["p50_ms"]
    lines += ["", f"The request's own work, timed stage by stage in this process (prepare, graph, rank and body), "
              f"adds up to {work:.2f} ms. KServe answering the same request and response with no model at all (the "
              f"floor row, benchmarks/kserve_floor.py) takes {floor} ms: the HTTP round trip, uvicorn and KServe. "
              f"End to end the server answers in {local} ms (p50), {local - floor - work:+.2f} ms beside floor + "
              "work. The stages were timed cycling through the server's hot queries (not one request repeated, "
              "whose data would stay in the CPU's caches); the rest is what they cost inside a server process "
              "(its event loop, KServe's per-request metrics and the request's own bookkeeping)."]
    lines += ["", f"![latency]({report.get('name', 'serving')}-latency.png)", "",
              "## Query-embedding cache on Zipf replays", "",
              "W-TinyLFU (theine), the cache `relevance serve` uses; LRU for comparison. Best possible: the traffic "
              "share of the 10,000 most frequent queries.", "",
              "| Zipf exponent | hit rate | best possible | fraction of best | LRU hit rate | LRU fraction |",
              "|---|---|---|---|---|---|"]
    for r in report["cache_hit_rate"]:
        lines.append(f"| {r['exponent']} | {r['hit_rate']} | {r['best_possible']} | {r['fraction_of_best']} | "
                     f"{r['lru_hit_rate']} | {r['lru_fraction_of_best']} |")
    q = report["quality"]
    lines += ["", "## Student vs teacher cost", "",
              f"- Teacher (MiniLM-L6 cross-encoder, torch, 1 thread) on the same 100 candidates: "
              f"**{report['teacher_ms_per_request']} ms** fp32, {report['teacher_ms_per_request_bf16']} ms bf16.",
              f"- Student request (cached p50, fp32, in process, end to end over HTTP): {report['p50_ms']} ms → "
              f"**student_vs_teacher_cost_ratio {report['student_vs_teacher_cost_ratio']}×** "
              f"({report['student_vs_teacher_cost_ratio_uncached']}× for uncached queries).", "",
              "## Quality through the serving path", "",
              f"{q['pairs']} {q['split']} pairs. Offline: the student in torch on the training featurizer; serving: "
              "OnlineScorer (ONNX encoder, Feast online features, the lexical block, the serving graph).", "",
              "| scored by | accuracy | nDCG@20 |", "|---|---|---|"]
    lines += [f"| {name} | {v['accuracy']} | {v['ndcg@20']} |" for name, v in q.items()
              if isinstance(v, dict) and "accuracy" in v]
    lines += [f"| {name} − offline | {v['accuracy']:+} | {v['ndcg@20']:+} |" for name, v in q["delta"].items()]
    lines += ["", "## Targets", ""]
    for name, met in report["targets"].items():
        lines.append(f"- {'met' if met else '**missed**'}: {name}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "homedepot-minilm.yaml")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8, help="rounds the paths are interleaved in")
    parser.add_argument("--teacher-repeats", type=int, default=10)
    parser.add_argument("--profile-only", action="store_true",
                        help="print where a request's and a cache miss's time goes (in process), then stop")
    parser.add_argument("--about", default=None, help="what the student is, for the report (another student)")
    parser.add_argument("--command", default=None, help="the command to rerun it, for the report (another student)")
    parser.add_argument("--name", default="serving", help="results' file names: benchmarks/results/NAME.{json,md} "
                                                            "(another student: benchmarks.serving_student)")
    args = parser.parse_args()
    from benchmarks import machine

    host = machine()  # before this process pins itself: the machine's cores, not the load generator's one
    os.sched_setaffinity(0, {1})  # the load generator's core; the servers get core 0
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
    print("profile…", flush=True)
    profile = profile_request(args.config, queries, candidates)
    print(json.dumps(profile, indent=1), flush=True)
    if args.profile_only:
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp())
    # The servers are warmed once and measured over several minutes of rounds: items cached at warm-up must not
    # expire midway (serving.item_cache_ttl_seconds, 300 s by default), or later rounds would read Feast.
    variants = {}
    for variant, int8 in (("fp32", False), ("int8", True)):
        overrides = yaml.safe_load(args.config.read_text())
        overrides.setdefault("serving", {}).update({"int8": int8, "item_cache_ttl_seconds": 86_400})
        variants[variant] = scratch / f"{args.config.stem}-{variant}.yaml"
        variants[variant].write_text(yaml.safe_dump(overrides))
    setups = {f"{path_name} {variant}": (config_path, predictor) for path_name, predictor in PATHS.items()
              for variant, config_path in variants.items()}
    setups[FLOOR] = (None, None)
    server, latencies = measure_servers(setups, queries, candidates, args.requests, args.rounds, scratch)
    for name, result in server.items():
        print(name, json.dumps(result), flush=True)
    print("cache replays…", flush=True)
    replays = [zipf_replay(1.0), zipf_replay(1.2)]
    print("teacher…", flush=True)
    teacher = teacher_cost(args.config, queries, candidates, args.teacher_repeats)
    print("quality…", flush=True)
    quality = serving_quality(args.config)
    teacher_ms = teacher["teacher_ms_per_request_fp32"]
    local = server["in process fp32"]
    report = {
        "dataset": dataset.info.name,
        "command": args.command or ("make bench-serving  (= .venv/bin/python -m benchmarks.serving "
                   f"--config {args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config} "
                   f"--requests {args.requests} --rounds {args.rounds}"
                   + (f" --name {args.name}" if args.name != "serving" else "") + ")"),
        "name": args.name, "about": args.about,
        "machine": f"{host}; servers pinned to 1 core; Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "candidates_per_request": CANDIDATES, "rounds": args.rounds,
        "p50_ms": local["cached"]["p50_ms"], "p99_ms": local["cached"]["p99_ms"], "rps": local["cached"]["rps"],
        "uncached": {k: local["uncached"][k] for k in ("p50_ms", "p99_ms", "rps")},
        "profile": profile,
        "server": server,
        "triton": {name.removeprefix("transformer → "): result for name, result in server.items()
                   if "Triton" in name},
        "cache_hit_rate": replays,
        "teacher_ms_per_request": teacher_ms,
        "teacher_ms_per_request_bf16": teacher["teacher_ms_per_request_bf16"],
        "student_ms_per_request": local["cached"]["p50_ms"],
        "student_vs_teacher_cost_ratio": round(teacher_ms / local["cached"]["p50_ms"], 1),
        "student_vs_teacher_cost_ratio_uncached": round(teacher_ms / local["uncached"]["p50_ms"], 1),
        "quality": quality,
    }
    triton_p50 = min(server[f"transformer → Triton ({p}) fp32"]["cached"]["p50_ms"] for p in ("HTTP", "gRPC"))
    report["targets"] = {
        "cached p50 <= 1.5 ms end to end over HTTP, in process (fp32)": local["cached"]["p50_ms"] <= 1.5,
        "cached p99 <= 3 ms end to end over HTTP, in process (fp32)": local["cached"]["p99_ms"] <= 3,
        f"transformer → real Triton cached p50 <= 3 ms (fp32, best of HTTP/gRPC: {triton_p50} ms)": triton_p50 <= 3,
        "cache miss (query encoder runs) p50 <= 4 ms (fp32, in process)": local["uncached"]["p50_ms"] <= 4,
        "quality through the serving path within 0.002 accuracy and nDCG@20 of the exported student (fp32)":
            all(abs(v) <= 0.002 for v in quality["delta"]["serving path, fp32"].values()),
        "cache hit rate >= 95% of best (Zipf 1.0 and 1.2)": all(r["fraction_of_best"] >= 0.95 for r in replays),
        "student >= 100x cheaper than the teacher (both fp32)": report["student_vs_teacher_cost_ratio"] >= 100,
    }
    report["student_encoders"] = student_encoders(ROOT / config.workdir)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    plot(latencies, RESULTS / f"{args.name}-latency.png")
    (RESULTS / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
