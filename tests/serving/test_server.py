"""Online serving, end to end on loopback: a tiny run is exported (ONNX + Triton model repository), its features
materialized to Feast's SQLite online store, and real servers are started: `relevance serve` in process, a real
Triton Inference Server (the nvidia-pytriton wheel's tritonserver, `make triton-env`) serving the student, and
`relevance serve --predictor-url` in front of it over HTTP and over gRPC.

What is checked: the served scores equal offline scoring with the training featurizer (so serving has no second
featurizer), V1 and V2 agree, the transformer → Triton paths (HTTP and gRPC) agree with the in-process one, health,
metadata and metrics endpoints (ours and Triton's), every kind of bad input gets a 4xx with a precise message
(ours and Triton's), unknown ids are flagged, and 1,000 generated requests never produce a 5xx.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack

import httpx
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relevance.serving.process import free_port, model_server

MODEL = "relevance-student"
# fp32 everywhere (RELEVANCE_CPU_BF16=0): the cached query vectors the offline featurizer uses are then computed
# as the fp32 ONNX encoder computes them online, whatever the CPU, so the comparison below can be tight.
ENV = {"HF_HUB_OFFLINE": "1", "RELEVANCE_THREADS": "1", "RELEVANCE_CPU_BF16": "0"}


@pytest.fixture(scope="module")
def deployment(run_settings, cli, tmp_path_factory, tiny_bert):
    """A tiny run, exported and materialized, served four ways: in process, a real Triton with the student, and
    the transformer in front of Triton over HTTP and over gRPC (--predictor-url)."""
    from relevance.config import load_config
    from relevance.serving.model_repository import build_model_repository
    from relevance.serving.triton import triton_server

    tmp = tmp_path_factory.mktemp("serving")
    patch = pytest.MonkeyPatch()
    patch.setenv("RELEVANCE_CPU_BF16", "0")
    config = {"profile": "quick", "workdir": str(tmp / "run"),
              **run_settings(items=200, judged_queries=40, impressions=600),
              "serving": {"max_candidates": 50, "max_query_chars": 200, "query_cache_size": 100,
                          "traffic_segment_seconds": 0.3}}
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cli("run", "--config", str(config_path))
    cli("features", "--config", str(config_path))
    cli("export", "--config", str(config_path), "--int8")
    repo = tmp / "triton-repository"
    build_model_repository(tmp / "run/export", repo, load_config(config_path).serving, backend="python")
    with ExitStack() as servers:
        urls = {"local": servers.enter_context(model_server(
            ["serve", "--config", str(config_path), "--traffic-dir", str(tmp / "traffic")], free_port(),
            tmp / "local.log", ENV))}
        triton = servers.enter_context(triton_server(repo, tmp / "triton-work", tmp / "triton.log"))
        for name, predictor in (("remote", triton.http_url), ("remote-grpc", triton.grpc_url)):
            # The HTTP transformer asks for KServe's per-request latency lines, which are off by default.
            latency = ["--enable_latency_logging", "true"] if name == "remote" else []
            urls[name] = servers.enter_context(model_server(
                ["serve", "--config", str(config_path), "--predictor-url", predictor, *latency], free_port(),
                tmp / f"{name}.log", ENV))
        yield {"tmp": tmp, "config": config_path, "urls": urls, "workdir": tmp / "run", "triton": triton,
               "triton_repository": repo}
    patch.undo()


@pytest.fixture(scope="module")
def catalog(deployment):
    from relevance.data.schema import Dataset

    dataset = Dataset.load(deployment["workdir"] / "data", with_impressions=False)
    test = dataset.split("test")
    query_id = test["query_id"].iloc[0]
    query = dataset.queries.set_index("query_id").loc[query_id, "query"]
    candidates = dataset.items["item_id"].iloc[:30].tolist()
    return dataset, query, candidates


def _v1(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=30, **kwargs)


def _v2_body(query: str, candidates: list[str], locale: str = "en-US") -> dict:
    return {"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": [query]},
                       {"name": "candidates", "shape": [len(candidates)], "datatype": "BYTES", "data": candidates},
                       {"name": "locale", "shape": [1], "datatype": "BYTES", "data": [locale]}]}


def _v2(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30, **kwargs)


def test_triton_model_repositories_layout_and_config(deployment):
    from relevance.serving.model_repository import ModelRepositoryError, read_model_config, validate_model_repository

    repo = deployment["workdir"] / "export/model_repository"
    assert sorted(p.name for p in repo.iterdir()) == [MODEL]
    assert validate_model_repository(repo, MODEL) == repo / MODEL / "1" / "model.onnx"
    config = read_model_config(repo, MODEL)
    d = json.loads((deployment["workdir"] / "export/bundle.json").read_text())["embedding_dim"]
    assert config.name == MODEL and config.platform == "onnxruntime_onnx"
    assert [(i.name, list(i.dims)) for i in config.input] == [("query", [d]), ("item", [d]), ("lexical", [11])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("probs", [5])]
    assert config.max_batch_size >= 50 and config.dynamic_batching.max_queue_delay_microseconds >= 0
    # The loopback variant: the same graph and inputs on the python backend, with its model.py.
    python = read_model_config(deployment["triton_repository"], MODEL)
    assert python.backend == "python" and not python.platform and python.input == config.input
    assert (deployment["triton_repository"] / MODEL / "1" / "model.py").exists()
    # A config that disagrees with the ONNX graph is caught before Triton would refuse to load it.
    broken = deployment["tmp"] / "broken"
    (broken / MODEL / "1").mkdir(parents=True)
    (broken / MODEL / "1" / "model.onnx").write_bytes((repo / MODEL / "1" / "model.onnx").read_bytes())
    text = (repo / MODEL / "config.pbtxt").read_text().replace("dims: 11", "dims: 7")
    (broken / MODEL / "config.pbtxt").write_text(text.replace('platform: "onnxruntime_onnx"', 'platform: "pytorch"'))
    with pytest.raises(ModelRepositoryError, match=r"config dims \[7\].*|platform 'pytorch'"):
        validate_model_repository(broken, MODEL)
    (broken / MODEL / "config.pbtxt").write_text("name: 1 2 3")
    with pytest.raises(ModelRepositoryError, match="not a Triton ModelConfig"):
        validate_model_repository(broken, MODEL)


def test_served_scores_equal_offline_scoring_with_the_training_featurizer(deployment, catalog):
    from relevance.chain import Chain
    from relevance.config import load_config
    from relevance.models.metrics import expected_grade
    from relevance.student.model import Student

    dataset, query, candidates = catalog
    response = _v1(deployment["urls"]["local"], {"instances": [{"query": query, "locale": "en-US",
                                                                "candidates": candidates}]})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"][0]
    assert served["query"] == query and len(served["items"]) == len(candidates)
    scores = [item["score"] for item in served["items"]]
    assert scores == sorted(scores, reverse=True)

    chain = Chain(load_config(deployment["config"]))
    featurizer = chain.featurizer(dataset)
    probs = Student.load(chain.student_dirs["student"]).predict_proba(featurizer.transform([query] * len(candidates),
                                                                                           candidates))
    offline = dict(zip(candidates, probs))
    # Online the query is embedded by the ONNX encoder, offline by torch, both fp32 here: float rounding apart.
    # A second featurizer would be off by orders of magnitude more.
    for item in served["items"]:
        np.testing.assert_allclose(item["probs"], offline[item["item_id"]], atol=5e-5)
        assert item["score"] == pytest.approx(float(expected_grade(offline[item["item_id"]][None])[0]), abs=1e-3)
        assert item["unknown"] is False


def test_v2_and_the_transformer_on_triton_over_http_and_grpc_agree_with_v1(deployment, catalog):
    """Triton runs the same graph with one query row per candidate (requests batch together there), in process it
    gets one row: each item's score agrees to float rounding (1e-5), and each ranking is best first."""
    _, query, candidates = catalog
    v1 = _v1(deployment["urls"]["local"], {"instances": [{"query": query, "candidates": candidates}]}).json()
    expected = [(i["item_id"], i["score"]) for i in v1["predictions"][0]["items"]]
    for name in ("local", "remote", "remote-grpc"):
        response = _v2(deployment["urls"][name], _v2_body(query, candidates))
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert set(outputs) == {"item_id", "score", "probs", "unknown"}
        assert outputs["probs"]["shape"] == [len(candidates), 5]
        got = dict(zip(outputs["item_id"]["data"], outputs["score"]["data"]))
        assert sorted(got) == sorted(candidates) and list(got.values()) == sorted(got.values(), reverse=True), name
        np.testing.assert_allclose([got[i] for i, _ in expected], [s for _, s in expected], atol=1e-5)
    two = {"instances": [{"query": query, "candidates": candidates[:4]}, {"query": "drill", "candidates": candidates}]}
    local = _v1(deployment["urls"]["local"], two).json()["predictions"]
    for name in ("remote", "remote-grpc"):  # several instances: one Triton request, split back per query
        remote = _v1(deployment["urls"][name], two).json()["predictions"]
        for a, b in zip(local, remote, strict=True):
            scores = {i["item_id"]: i["score"] for i in b["items"]}
            np.testing.assert_allclose([scores[i["item_id"]] for i in a["items"]], [i["score"] for i in a["items"]],
                                       atol=1e-5)


def _triton_inputs(rows: int, dimension: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    unit = rng.normal(size=(rows + 1, dimension))
    unit = (unit / np.linalg.norm(unit, axis=1, keepdims=True)).astype(np.float32)
    return {"query": np.repeat(unit[:1], rows, 0), "item": unit[1:],
            "lexical": rng.normal(size=(rows, 11)).astype(np.float32)}


def _fp32_tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> dict:
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.reshape(-1).tolist()}


def test_triton_serves_the_exported_graph_with_health_metadata_metrics_and_4xx(deployment):
    """The real Triton, asked directly: what the transformer relies on, and what a bad request gets."""
    from relevance.common.onnx_session import onnx_session

    triton, url = deployment["triton"], deployment["triton"].http_url
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/models/{MODEL}/ready").status_code == 200
    metadata = httpx.get(f"{url}/v2/models/{MODEL}").json()
    dimension = json.loads((deployment["workdir"] / "export/bundle.json").read_text())["embedding_dim"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("query", "FP32", [-1, dimension]), ("item", "FP32", [-1, dimension]), ("lexical", "FP32", [-1, 11])]
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [("probs", [-1, 5])]

    inputs = _triton_inputs(7, dimension)
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": [_fp32_tensor(n, a) for n, a in
                                                                           inputs.items()]}, timeout=30)
    assert response.status_code == 200, response.text
    probs = np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(7, 5)
    expected = onnx_session(deployment["workdir"] / "export/student.onnx").run(["probs"], inputs)[0]
    np.testing.assert_allclose(probs, expected, atol=1e-6)

    def metric(name: str) -> float:
        text = httpx.get(triton.metrics_url).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    bad = {
        "wrong datatype": [_fp32_tensor("query", inputs["query"].astype(np.int32), "INT32"),
                           _fp32_tensor("item", inputs["item"]), _fp32_tensor("lexical", inputs["lexical"])],
        "wrong width": [_fp32_tensor("query", inputs["query"][:, :-1]), _fp32_tensor("item", inputs["item"]),
                        _fp32_tensor("lexical", inputs["lexical"])],
        "unknown input": [_fp32_tensor("features", inputs["item"]), _fp32_tensor("item", inputs["item"]),
                          _fp32_tensor("lexical", inputs["lexical"])],
        "missing input": [_fp32_tensor("item", inputs["item"]), _fp32_tensor("lexical", inputs["lexical"])],
        "rows disagree": [_fp32_tensor("query", inputs["query"][:1]), _fp32_tensor("item", inputs["item"]),
                          _fp32_tensor("lexical", inputs["lexical"])],
    }
    for name, tensors in bad.items():
        response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": tensors}, timeout=30)
        assert 400 <= response.status_code < 500 and response.json().get("error"), f"{name}: {response.text[:300]}"
    assert httpx.get(f"{url}/v2/models/{MODEL}/ready").status_code == 200  # still serving
    assert metric("nv_inference_request_success") >= 1


def test_score_cli_is_a_tritonclient_rerank(cli, deployment, catalog):
    _, query, candidates = catalog
    result = cli("score", "--url", deployment["urls"]["remote"], "--query", query,
                  "--candidates", ",".join(candidates[:5] + ["no-such-item"]), "--json")
    ranking = json.loads(result.stdout)
    assert {i["item_id"] for i in ranking["items"]} == set(candidates[:5] + ["no-such-item"])
    assert [i["item_id"] for i in ranking["items"] if i["unknown"]] == ["no-such-item"]
    down = cli("score", "--url", f"http://127.0.0.1:{free_port()}", "--query", "x", "--candidates", "a",
               check=False)
    assert down.returncode == 2 and "error:" in down.stderr


@pytest.mark.parametrize("flags,message", [
    (["--model_name", "other"], "must equal serving.model_name"),
    (["--predictor_host", "triton:8000", "--protocol", "v1"], "REST (v2) or gRPC (grpc-v2), got ['v1']"),
    (["--workers", "2"], "one worker"),
    (["--access_log_format", "%(h)s"], "use serving.access_log"),
    (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag"),
    (["--http_port", "eighty"], "invalid int value"),
])
def test_kserve_flags_are_parsed_by_kserves_parser_and_checked(cli, deployment, flags, message):
    result = cli("serve", "--config", deployment["config"], *flags, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_kserves_predictor_flags_name_a_rest_or_grpc_predictor():
    from relevance.config import ServingConfig
    from relevance.serving.server import model_server_args, predictor_url

    def url(*flags: str) -> str | None:
        return predictor_url(*model_server_args(list(flags)), ServingConfig())

    assert url() is None
    assert url("--predictor_host", "student-predictor:8080") == "http://student-predictor:8080"
    assert url("--predictor_host", "p:8080", "--protocol", "v2", "--predictor_use_ssl", "true") == "https://p:8080"
    assert url("--predictor_host", "p:8081", "--predictor_protocol", "grpc-v2") == "grpc://p:8081"
    with pytest.raises(ValueError, match="got \\['grpc-v2', 'v2'\\]"):
        url("--predictor_host", "p:8081", "--protocol", "v2", "--predictor_protocol", "grpc-v2")


def test_importing_the_server_changes_nothing():
    code = ("import sys; argv = list(sys.argv); import prometheus_client as p; import relevance.serving.server; "
            "assert sys.argv == argv; ours = [n for n in p.REGISTRY._names_to_collectors if n.startswith('relevance')]; "
            "assert not ours, ours; print('ok')")
    # A fresh process: this one may have imported the server already.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **ENV})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_unknown_ids_are_scored_with_defaults_and_flagged(deployment, catalog):
    _, query, candidates = catalog
    body = {"instances": [{"query": query, "candidates": ["ghost-1", candidates[0], "ghost-2"]}]}
    items = _v1(deployment["urls"]["local"], body).json()["predictions"][0]["items"]
    flags = {i["item_id"]: i["unknown"] for i in items}
    assert flags == {"ghost-1": True, candidates[0]: False, "ghost-2": True}
    ghosts = [i for i in items if i["unknown"]]
    # Both ghosts get the same default features, so the same score.
    assert ghosts[0]["score"] == pytest.approx(ghosts[1]["score"]) and all(abs(sum(i["probs"]) - 1) < 1e-4
                                                                          for i in items)


def test_kserves_latency_log_lines_only_when_asked_for(deployment, catalog):
    _, query, candidates = catalog
    for name in ("local", "remote"):
        response = httpx.post(f"{deployment['urls'][name]}/v1/models/{MODEL}:predict",
                              json={"instances": [{"query": query, "candidates": candidates}]})
        assert response.status_code == 200
    logs = {name: (deployment["tmp"] / f"{name}.log").read_text() for name in ("local", "remote")}
    assert "preprocess_ms" not in logs["local"] and "kserve.io" not in logs["local"]
    assert "preprocess_ms" in logs["remote"] and "kserve.io" in logs["remote"]


def test_the_server_writes_a_traffic_record_per_reranked_query(deployment, catalog):
    from relevance.common.processes import wait_until
    from relevance.traffic import read_traffic

    _, query, candidates = catalog
    url = deployment["urls"]["local"]
    v1 = httpx.post(f"{url}/v1/models/{MODEL}:predict", headers={"x-request-id": "traffic-v1"},
                    json={"instances": [{"query": query, "candidates": candidates},
                                        {"query": "sofa", "locale": "de-DE", "candidates": candidates[:3]}]}).json()
    # A V2 body's id is the client's (echoed in the response) and need not be unique: records key on the
    # gateway's x-request-id, or an id of the server's own.
    v2 = httpx.post(f"{url}/v2/models/{MODEL}/infer", headers={"x-request-id": "traffic-v2"}, json={
        "id": "1", "inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": [query]},
        {"name": "candidates", "datatype": "BYTES", "shape": [len(candidates)], "data": candidates}]}).json()
    traffic = deployment["tmp"] / "traffic"
    ids = {"traffic-v1", "traffic-v2"}
    wait_until(lambda: ids <= set(read_traffic(traffic, columns=["request_id"])["request_id"]), "traffic records")
    frame = read_traffic(traffic).set_index(["request_id", "instance"])
    bundle = json.loads((deployment["workdir"] / "export/bundle.json").read_text())
    for (request_id, instance), prediction in [(("traffic-v1", 0), v1["predictions"][0]),
                                               (("traffic-v1", 1), v1["predictions"][1])]:
        row = frame.loc[(request_id, instance)]
        assert row["query"] == prediction["query"] and row["locale"] == prediction["locale"]
        assert row["item_ids"].tolist() == [item["item_id"] for item in prediction["items"]]
        np.testing.assert_allclose(row["scores"], [item["score"] for item in prediction["items"]], rtol=1e-6)
        assert row["model_version"] == prediction["model_version"] == bundle["student_version"]
        assert row["embedding_version"] == prediction["embedding_version"] == bundle["feature_project"]
        assert row["source"] == "transformer" and row["model_name"] == MODEL
    row = frame.loc[("traffic-v2", 0)]
    outputs = {output["name"]: output["data"] for output in v2["outputs"]}
    assert row["item_ids"].tolist() == outputs["item_id"] and row["query"] == query
    assert v2["parameters"]["model_version"] == bundle["student_version"] and v2["id"] == "1"


def test_health_metadata_and_metrics(deployment, catalog):
    _, query, candidates = catalog
    url = deployment["urls"]["local"]
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/models/{MODEL}/ready").status_code == 200
    assert httpx.get(f"{url}/v1/models/{MODEL}").json()["ready"] is True
    metadata = httpx.get(f"{url}/v2/models/{MODEL}").json()
    assert [i["name"] for i in metadata["inputs"]] == ["query", "candidates", "locale"]
    assert [o["name"] for o in metadata["outputs"]] == ["item_id", "score", "probs", "unknown"]

    def metric(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    before = httpx.get(f"{url}/metrics").text
    fresh = f"{query} metrics probe {time.time()}"
    for _ in range(3):
        assert _v1(url, {"instances": [{"query": fresh, "candidates": candidates[:3]}]}).status_code == 200
    assert _v1(url, {"instances": []}).status_code == 400
    after = httpx.get(f"{url}/metrics").text
    assert metric(after, "relevance_query_cache_misses_total") - metric(before, "relevance_query_cache_misses_total") == 1
    assert metric(after, "relevance_query_cache_hits_total") - metric(before, "relevance_query_cache_hits_total") == 2
    assert metric(after, "relevance_request_seconds_count") - metric(before, "relevance_request_seconds_count") == 3
    bad = 'relevance_requests_total{model_name="relevance-student",outcome="bad_request",protocol="v1"}'
    assert metric(after, bad.split("{")[0]) > metric(before, bad.split("{")[0])
    assert 'relevance_http_responses_total{code="400"}' in after
    assert "relevance_query_cache_hit_rate" in after and "relevance_request_seconds_bucket" in after


def _bad_requests(query: str, candidates: list[str]) -> list[tuple[str, str, dict, object, str]]:
    """(name, protocol, headers, body, expected message fragment)."""
    v2 = _v2_body(query, candidates[:3])
    renamed = json.loads(json.dumps(v2))
    renamed["inputs"][0]["name"] = "q"
    wrong_type = json.loads(json.dumps(v2))
    wrong_type["inputs"][1]["datatype"] = "FP32"
    wrong_type["inputs"][1]["data"] = [1.0, 2.0, 3.0]
    wrong_shape = json.loads(json.dumps(v2))
    wrong_shape["inputs"][1]["shape"] = [7]
    two_queries = json.loads(json.dumps(v2))
    two_queries["inputs"][0].update(shape=[2], data=["a", "b"])
    json_headers = {"content-type": "application/json"}
    return [
        ("malformed JSON", "v1", json_headers, b'{"instances": [', "Unrecognized request format"),
        ("malformed JSON (v2)", "v2", json_headers, b'{"inputs": [{"name": ', ""),
        ("not JSON at all", "v1", {"content-type": "text/plain"}, b"hello", "expected a JSON object"),
        ("invalid UTF-8", "v1", json_headers, b'{"instances": [{"query": "\xff\xfe", "candidates": ["a"]}]}', ""),
        ("invalid UTF-8 (v2)", "v2", json_headers, b'{"inputs": [{"name": "query", "shape": [1], '
                                                    b'"datatype": "BYTES", "data": ["\xc3\x28"]}]}', ""),
        ("wrong tensor name", "v2", json_headers, renamed, "unknown input(s) ['q']"),
        ("wrong datatype", "v2", json_headers, wrong_type, "expected datatype BYTES, got FP32"),
        ("wrong shape", "v2", json_headers, wrong_shape, "shape [7] holds 7 elements, data has 3"),
        ("two queries in one v2 request", "v2", json_headers, two_queries, "expected shape [1]"),
        ("missing candidates", "v2", json_headers, {"inputs": v2["inputs"][:1]}, "missing input 'candidates'"),
        ("empty candidates", "v1", json_headers, {"instances": [{"query": query, "candidates": []}]},
         "expected at least one item id"),
        ("too many candidates", "v1", json_headers,
         {"instances": [{"query": query, "candidates": [f"i{n}" for n in range(51)]}]}, "at most 50"),
        ("huge query", "v1", json_headers, {"instances": [{"query": "x" * 10_000, "candidates": ["a"]}]},
         "at most 200 characters, got 10000"),
        ("huge item id", "v1", json_headers, {"instances": [{"query": query, "candidates": ["i" * 5000]}]},
         "item ids are at most 256 characters"),
        ("huge body", "v1", json_headers, {"instances": [{"query": "q", "candidates": ["a"]}], "pad": "x" * (5 << 20)},
         "byte limit"),
        ("duplicate candidates", "v1", json_headers, {"instances": [{"query": query, "candidates": ["a", "a"]}]},
         "appears more than once"),
        ("non-string candidate", "v1", json_headers, {"instances": [{"query": query, "candidates": [3]}]},
         "candidates[0]: expected a non-empty string"),
        ("blank query", "v1", json_headers, {"instances": [{"query": "   ", "candidates": ["a"]}]},
         "non-empty string"),
        ("unknown field", "v1", json_headers, {"instances": [{"query": "q", "candidates": ["a"], "k": 3}]},
         "unknown field(s) ['k']"),
        ("no instances", "v1", json_headers, {"rows": []}, 'expected "instances"'),
    ]


def test_bad_input_gets_a_4xx_with_a_precise_message(deployment, catalog):
    _, query, candidates = catalog
    url = deployment["urls"]["local"]
    for name, protocol, headers, body, fragment in _bad_requests(query, candidates):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        path = f"/v1/models/{MODEL}:predict" if protocol == "v1" else f"/v2/models/{MODEL}/infer"
        response = httpx.post(url + path, content=content, headers=headers, timeout=30)
        assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
        message = response.json().get("error", "") if response.headers.get("content-type", "").startswith(
            "application/json") else response.text
        assert fragment in str(message), f"{name}: {message!r}"
    # The server is still up and still scoring.
    assert _v1(url, {"instances": [{"query": query, "candidates": candidates[:2]}]}).status_code == 200


_text = st.one_of(st.text(max_size=60), st.sampled_from(["", " ", "drill", "\x00", "\ud7ff", "𝔘𝔫𝔦"]))
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                     max_leaves=12)
_instance = st.fixed_dictionaries({"query": st.one_of(_text, _json), "candidates": st.one_of(
    st.lists(_text, max_size=60), _json)}, optional={"locale": st.one_of(_text, _json), "extra": _json})
_tensor = st.fixed_dictionaries({
    "name": st.sampled_from(["query", "candidates", "locale", "features", ""]) | _text,
    "shape": st.one_of(st.lists(st.integers(-2, 70), max_size=3), _json),
    "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "BOOL", "bytes", "STRING"]) | _text,
    "data": st.one_of(st.lists(_text, max_size=60), st.lists(st.lists(_text, max_size=3), max_size=3), _json)})
_v1_bodies = st.one_of(st.fixed_dictionaries({"instances": st.lists(_instance, max_size=3)}), _json)
_v2_bodies = st.one_of(st.fixed_dictionaries({"inputs": st.lists(_tensor, max_size=4)},
                                             optional={"id": _text, "parameters": _json}), _json)
_raw = st.binary(max_size=200)


@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(["v1", "v2", "raw-v1", "raw-v2"]), v1=_v1_bodies, v2=_v2_bodies, raw=_raw)
def test_fuzz_1000_generated_requests_never_get_a_5xx(deployment, kind, v1, v2, raw):
    url = deployment["urls"]["local"]
    if kind == "v1":
        content = json.dumps(v1, ensure_ascii=False).encode("utf-8", "surrogatepass")
    elif kind == "v2":
        content = json.dumps(v2, ensure_ascii=False).encode("utf-8", "surrogatepass")
    else:
        content = raw
    path = f"/v1/models/{MODEL}:predict" if kind.endswith("v1") else f"/v2/models/{MODEL}/infer"
    response = _client().post(url + path, content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, f"{kind} {content[:300]!r} → {response.status_code} {response.text[:300]}"


_clients: dict[str, httpx.Client] = {}


def _client() -> httpx.Client:
    if "c" not in _clients:
        _clients["c"] = httpx.Client(timeout=30)
    return _clients["c"]


def test_the_monitor_tells_drifted_traffic_from_undrifted(deployment, catalog, cli, tmp_path):
    """Training queries with their BM25 candidates (the reference's distribution) against queries of words the
    catalog never had with random candidates: no alert (exit 0), then a drift alert (exit 3); an empty window
    is exit 4 and a bad time exit 2."""
    from datetime import datetime, timedelta, timezone

    from relevance.common.processes import wait_until
    from relevance.models.bm25 import BM25Index
    from relevance.traffic import read_traffic

    dataset, _, _ = catalog
    url, traffic = deployment["urls"]["local"], deployment["tmp"] / "traffic"
    index = BM25Index.load(deployment["workdir"] / "export/bm25")
    train = sorted(set(dataset.query_text.reindex(dataset.split("train")["query_id"])))
    items = dataset.items["item_id"].tolist()
    rng = np.random.default_rng(0)
    moments = [datetime.now(timezone.utc)]
    with httpx.Client(timeout=30) as client:
        for kind in ("undrifted", "drifted"):
            for n in range(120):
                if kind == "undrifted":
                    query = train[n % len(train)]
                    candidates = index.top_k(query, 50)[0].tolist()
                else:
                    query = f"zq{n % 13} xvw{n % 7} 99{n % 5}kk"
                    candidates = rng.choice(items, 30, replace=False).tolist()
                response = client.post(f"{url}/v1/models/{MODEL}:predict", headers={"x-request-id": f"{kind}-{n}"},
                                       json={"instances": [{"query": query, "candidates": candidates}]})
                assert response.status_code == 200, response.text
            moments.append(datetime.now(timezone.utc))
    wait_until(lambda: len(read_traffic(traffic, since=moments[0], until=moments[2])) >= 240, "240 records")
    config = yaml.safe_load(deployment["config"].read_text())
    config["monitor"] = {"min_records": 100, "max_records": 120, "reference_queries": 50, "candidates": 50}
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))

    def monitor(since, until, out):
        return cli("monitor", "--config", path, "--traffic-dir", traffic, "--since", since.isoformat(),
                   "--until", until.isoformat(), "--out", tmp_path / out, check=False)

    calm = monitor(moments[0], moments[1], "calm")
    assert calm.returncode in (0, 3), calm.stdout + calm.stderr[-3000:]
    report = json.loads((tmp_path / "calm/monitor.json").read_text())
    assert calm.returncode == 0, (report["alerts"], report["drift"])
    assert report["records_of_this_student"] == 120 and report["coverage"]["unseen_queries"] == 0
    assert report["consistency"]["max_abs_score_difference"] < 1e-3  # the served scores are this bundle's
    assert 'relevance_monitor_psi{feature="terms_matched"}' in (tmp_path / "calm/monitor.prom").read_text()
    assert (tmp_path / "calm/monitor.html").read_text().count("data:image/png;base64") == 1

    # Judged quality with the run's teacher: the tiny teacher gives every judge-check pair one grade, so even with
    # the agreement floor at 0 it is refused (it would call every served order ideal), and the drift verdict
    # stands; tests/serving/test_monitor.py checks the judged figures, gauges and plot on a judge that ranks.
    config["monitor"].update({"judge_lists": 20, "judge_k": 5, "judge_depth": 20, "judge_min_agreement": 0.0})
    path.write_text(yaml.safe_dump(config))
    refused = cli("monitor", "--config", path, "--traffic-dir", traffic, "--since", moments[0].isoformat(),
                  "--until", moments[1].isoformat(), "--out", tmp_path / "refused", "--judge",
                  deployment["workdir"] / "teacher", check=False)
    report = json.loads((tmp_path / "refused/monitor.json").read_text())
    assert refused.returncode == 0 and "same grade" in report["judged"]["refused"], report.get("judged")
    assert report["drift"] and "relevance_monitor_judge_refused 1.0" in (tmp_path / "refused/monitor.prom").read_text()
    missing = cli("monitor", "--config", path, "--traffic-dir", traffic, "--judge", tmp_path, check=False)
    assert missing.returncode == 2 and "no manifest.json" in missing.stderr  # before any of the work

    drifted = monitor(moments[1], moments[2], "drifted")
    assert drifted.returncode in (0, 3), drifted.stdout + drifted.stderr[-3000:]
    report = json.loads((tmp_path / "drifted/monitor.json").read_text())
    assert drifted.returncode == 3, report["drift"]
    assert report["coverage"]["unseen_queries"] == 1.0
    assert any(alert.startswith(("terms_matched", "log_bm25", "cosine")) for alert in report["alerts"])
    assert "relevance_monitor_alert 1.0" in (tmp_path / "drifted/monitor.prom").read_text()

    empty = monitor(moments[2] + timedelta(hours=1), moments[2] + timedelta(hours=2), "empty")
    assert empty.returncode == 4 and "too little traffic" in empty.stdout
    bad = cli("monitor", "--config", path, "--traffic-dir", traffic, "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "--since: expected an ISO 8601 time" in bad.stderr


def test_served_pairs_go_to_human_grading_and_come_back_as_judgments(deployment, catalog, cli, tmp_path,
                                                                      label_studio_export):
    """The loop's labelling leg on what the server captured: `relevance select --from-traffic` (the teacher's
    entropy, at most 2 pairs a query, no valid/test query), then grades for them through `import-labels`."""
    import shutil

    import pandas as pd

    from relevance.data.splits import normalize_query
    from relevance.labels.from_traffic import traffic_query_id

    dataset, _, _ = catalog
    url, traffic = deployment["urls"]["local"], deployment["tmp"] / "traffic"
    new_query = "zzfresh traffic query"
    for query in (new_query, *dataset.queries["query"].head(10)):
        body = {"instances": [{"query": query, "candidates": dataset.items["item_id"][:20].tolist()}]}
        response = httpx.post(f"{url}/v1/models/{MODEL}:predict", timeout=30, json=body)
        assert response.status_code == 200
    from relevance.common.processes import wait_until
    from relevance.traffic import read_traffic

    wait_until(lambda: new_query in set(read_traffic(traffic, columns=["query"])["query"]), "the new query's record")
    workdir = tmp_path / "run"
    shutil.copytree(deployment["workdir"], workdir)  # the dataset changes: not the shared run's
    cli("select", "--config", deployment["config"], "--workdir", workdir, "--from-traffic", traffic, "--budget", 12,
        "--per-query", 2, "--strategy", "entropy", "--top-k", 5, "--out", tmp_path / "project")
    tasks = json.loads((tmp_path / "project/tasks.json").read_text())
    assert 0 < len(tasks) <= 12
    chosen = pd.DataFrame([task["data"] for task in tasks])
    assert chosen.groupby("query_id").size().max() <= 2
    held = set(dataset.query_text.reindex(pd.concat([dataset.split("valid"), dataset.split("test")])["query_id"])
               .map(normalize_query))
    assert not set(chosen["query"].map(normalize_query)) & held
    queries = pd.read_parquet(workdir / "data/queries.parquet")
    assert len(queries) >= len(dataset.queries) and set(dataset.queries["query_id"]) <= set(queries["query_id"])
    fresh = traffic_query_id(new_query)
    assert (fresh in set(chosen["query_id"])) == (fresh in set(queries["query_id"]))
    (tmp_path / "export.json").write_text(json.dumps(label_studio_export(tasks, dataset.info.grade_names)))
    cli("import-labels", tmp_path / "export.json", "--round", 1, "--config", deployment["config"], "--workdir", workdir)
    judgments = pd.read_parquet(workdir / "data/judgments.parquet")
    added = judgments[judgments["round"] == 1]
    assert len(added) == len(tasks) and set(added["split"]) == {"train"}
