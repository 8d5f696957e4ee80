"""The model server's Prometheus collectors (relevance.serving.metrics): nothing is registered at import, the
collectors are created once per process whatever asks for them, and they carry the names and labels the canary
analysis and the dashboards read."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from relevance.serving.metrics import LATENCY_BUCKETS, metrics


def test_importing_registers_nothing():
    code = ("import prometheus_client as p; import relevance.serving.metrics; "
            "ours = [n for n in p.REGISTRY._names_to_collectors if n.startswith('relevance')]; "
            "assert not ours, ours; print('ok')")
    # A fresh process: this one may have created the collectors already.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_collectors_are_created_once_and_shared_with_the_server():
    from relevance.serving import server

    assert metrics() is metrics() is server.metrics()
    assert server.LATENCY_BUCKETS is LATENCY_BUCKETS


def test_names_labels_and_instance_are_what_the_canary_reads():
    from prometheus_client import generate_latest

    collectors = metrics()
    collectors.requests.labels("m", "v1", "ok").inc()
    collectors.request_seconds.labels("m", "v2").observe(0.0007)
    text = generate_latest().decode()
    assert 'relevance_requests_total{model_name="m",outcome="ok",protocol="v1"}' in text
    assert 'relevance_request_seconds_bucket{le="0.001",model_name="m",protocol="v2"}' in text
    assert f'relevance_server_info{{instance="{socket.gethostname()}"}} 1.0' in text
    # From 0.5 ms up, strictly increasing: the student's budget is single-digit milliseconds.
    assert LATENCY_BUCKETS[0] == 0.0005 and list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
