"""The local loop's traffic pieces on loopback, with a stand-in upstream instead of model servers: the revision
proxy measures what clients see and injects Istio-style faults; the splitter's share can be set while it runs, by
the watch's splitter target among others."""

from __future__ import annotations

import random
import time

import httpx
import pytest
from relevance.serving.canary import analysis
from relevance.serving.canary.local import ADMIN_PATH, VARIANT_HEADER, Faults, RevisionProxy, Splitter, serve_in_thread
from relevance.serving.canary.rollout import Plan
from relevance.serving.canary.watch import SplitterTarget
from relevance.serving.process import free_port


def _upstream(name: str):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def answer(request):
        return JSONResponse({"server": name, "path": request.url.path})

    return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])


def test_the_revision_proxy_measures_and_injects_faults():
    faults, requests, seed = Faults(delay_ms=120, abort_percent=40), 20, 3
    rng = random.Random(seed)
    expected_aborts = sum(rng.random() * 100 < faults.abort_percent for _ in range(requests))
    with serve_in_thread(_upstream("challenger"), free_port()) as upstream:
        with RevisionProxy(upstream, "challenger", faults, seed).serve(free_port()) as proxy:
            before = analysis.parse_metrics(httpx.get(f"{proxy}/metrics").text)
            started = time.perf_counter()
            ready = httpx.get(f"{proxy}/v2/health/ready")  # health checks pass untouched, and undelayed
            assert ready.status_code == 200 and time.perf_counter() - started < faults.delay_ms / 1000
            statuses = [httpx.post(f"{proxy}/v2/models/m/infer", json={}).status_code for _ in range(requests)]
            after = analysis.parse_metrics(httpx.get(f"{proxy}/metrics").text)
    assert statuses.count(503) == expected_aborts and 0 < expected_aborts < requests
    assert statuses.count(200) == requests - expected_aborts
    window = analysis.slo_window("challenger", before, after)
    assert (window.requests, window.errors) == (requests, expected_aborts)  # what the analysis will read
    assert window.p50_ms >= faults.delay_ms


def test_the_proxy_measures_with_the_servers_buckets_and_beyond():
    from relevance.serving.canary.local import CLIENT_TIMEOUT_S, LATENCY_BUCKETS
    from relevance.serving.server import LATENCY_BUCKETS as SERVER_BUCKETS

    assert LATENCY_BUCKETS[:len(SERVER_BUCKETS)] == SERVER_BUCKETS and LATENCY_BUCKETS[-1] == CLIENT_TIMEOUT_S


def test_fault_settings_are_checked():
    with pytest.raises(ValueError, match=r"fault delay: expected 0 <= ms < 10000 .* got 10000"):
        Faults(delay_ms=10_000)
    with pytest.raises(ValueError, match="fault abort: expected a percentage in 0..100, got 101"):
        Faults(abort_percent=101)
    assert Faults().line() == "none" and Faults(5, 10).line() == "+5 ms, 10% HTTP 503"


def test_the_splitter_share_can_be_set_while_it_runs():
    with serve_in_thread(_upstream("champion"), free_port()) as champion, \
            serve_in_thread(_upstream("challenger"), free_port()) as challenger:
        splitter = Splitter(champion, challenger, 50, seed=1)
        with splitter.serve(free_port()) as url:
            first = [httpx.post(f"{url}/v2/models/m/infer").headers[VARIANT_HEADER] for _ in range(30)]
            assert 5 <= first.count("challenger") <= 25
            target = SplitterTarget(url + ADMIN_PATH)  # the admin URL or the splitter's: either is accepted
            assert target.traffic().percent == 50
            sent = target.send(Plan("rollback", {}, [], "registry"))
            assert sent == f"splitter {url}: challenger share 50% → 0%"
            after = [httpx.post(f"{url}/v2/models/m/infer").json()["server"] for _ in range(20)]
            assert after == ["champion"] * 20
            state = httpx.get(url + ADMIN_PATH).json()
            assert state == {"percent": 0, "requests": {"champion": 20 + first.count("champion"),
                                                        "challenger": first.count("challenger")}}
            for body, message in (({"percent": 150}, "expected an integer in 0..100, got 150"),
                                  ({"percent": True}, "expected an integer in 0..100, got True"),
                                  ({"share": 5}, 'expected a JSON object {"percent": 0..100}')):
                refused = httpx.put(url + ADMIN_PATH, json=body)
                assert refused.status_code == 422 and message in refused.json()["error"]
            assert httpx.get(url + ADMIN_PATH).json()["percent"] == 0
            assert target.send(Plan("promote", {}, [], "registry")).endswith("0% → 100%")
    with pytest.raises(ValueError, match="expected http://host:port, got 'localhost:1'"):
        SplitterTarget("localhost:1")
    with pytest.raises(ValueError, match="does not answer .* is `relevance canary local --serve` running"):
        SplitterTarget(f"http://127.0.0.1:{free_port()}").traffic()
