"""The payload logger's sink, run for real (`relevance traffic-sink` on loopback), sent what KServe's logger
sends: binary-mode CloudEvents, a request and a response event per request."""

import json
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from relevance.common.processes import LoopbackProcess, free_port, http_ready, wait_until
from relevance.traffic import read_traffic

from .test_traffic import V1, V2

MAX_EVENT_BYTES = 8192
ONE = {"predictions": V1["predictions"][:1]}  # one query: refused whole, or stored whole


def headers(kind: str, request_id: str, **extra) -> dict:
    return {"ce-specversion": "1.0", "ce-id": request_id, "ce-source": "http://localhost:9081/",
            "ce-type": f"org.kubeflow.serving.inference.{kind}", "ce-inferenceservicename": "relevance-student",
            "ce-namespace": "relevance", "ce-component": "transformer", "ce-endpoint": "",
            "ce-time": "2026-12-03T10:00:00Z", "content-type": "application/json", **extra}


def send(url: str, n: int, client: httpx.Client) -> None:
    request = {"instances": [{"query": "drill", "candidates": ["a", "b"]}]}
    assert client.post(url, content=json.dumps(request), headers=headers("request", f"r-{n}")).status_code == 202
    response = client.post(url, content=json.dumps(V1 if n % 2 else V2), headers=headers("response", f"r-{n}"))
    assert response.status_code == 202, response.text


@pytest.fixture
def sink(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"serving": {"traffic_segment_seconds": 0.3,
                                                  "traffic_max_event_bytes": MAX_EVENT_BYTES}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = LoopbackProcess("traffic sink", [sys.executable, "-m", "relevance.cli", "traffic-sink", "--dir",
                                               tmp_path / "traffic", "--config", config, "--port", port, "--host",
                                               "127.0.0.1"], tmp_path / "sink.log", http_ready(f"{url}/healthz"))
    with process:
        yield {"url": url, "process": process, "dir": tmp_path / "traffic"}


def metric(url: str, outcome: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(f'relevance_traffic_events_total{{outcome="{outcome}"}}'))


def test_response_events_become_records(sink):
    with httpx.Client() as client:
        for n in range(4):
            send(sink["url"], n, client)
    wait_until(lambda: len(read_traffic(sink["dir"])) == 6, "6 records readable")  # V1 holds two queries
    frame = read_traffic(sink["dir"])
    assert sorted(set(frame["request_id"])) == ["r-0", "r-1", "r-2", "r-3"]
    first = frame[frame["request_id"] == "r-0"].iloc[0]
    assert first["query"] == "drill" and first["item_ids"].tolist() == ["b", "a"] and first["source"] == "logger"
    assert first["model_name"] == "relevance-student" and str(first["time"]) == "2026-12-03 10:00:00+00:00"
    assert metric(sink["url"], "stored") == 4 and metric(sink["url"], "request_event") == 4


def test_bad_events_are_counted_refused_and_the_sink_carries_on(sink):
    url = sink["url"]
    cases = [
        (b"not json at all", {"content-type": "text/plain"}, 400, "malformed"),  # no ce- headers, no JSON
        (b"{}", {k: v for k, v in headers("response", "x").items() if k != "ce-id"}, 400, "malformed"),
        (b"{not json", headers("response", "x"), 400, "malformed"),
        (json.dumps({"predictions": "?"}).encode(), headers("response", "x"), 400, "malformed"),
        (b"{}", headers("response", "x") | {"ce-type": "com.example.other"}, 400, "not_a_response"),
        (b"x" * (MAX_EVENT_BYTES + 1), headers("response", "x"), 413, "oversized"),
        (json.dumps({"predictions": [{**V1["predictions"][0], "query": ""}]}).encode(), headers("response", "x"),
         400, "rejected_record"),
        # what a hostile or broken sender can do besides: every one a counted 400, never a 500
        (json.dumps(ONE).encode(), headers("response", "x") | {"ce-time": "0001-01-01T00:00:00+01:00"}, 400,
         "rejected_record"),
        (b"[" * 3000 + b"]" * 3000, headers("response", "x"), 400, "malformed"),
        (json.dumps({"predictions": [{**V1["predictions"][0], "query": "\ud800"}]}).encode(),
         headers("response", "x"), 400, "rejected_record"),
        (json.dumps(ONE).replace("2.5", "1" + "0" * 400).encode(), headers("response", "x"), 400,
         "rejected_record"),
        (json.dumps({"specversion": "1.0", "id": "s", "source": "x", "type": "a.response", "time": 7,
                     "data": V1}).encode(), {"content-type": "application/cloudevents+json"}, 400, "malformed"),
        (b"\xff\xfe{}", {"content-type": "application/cloudevents+json"}, 400, "malformed"),
    ]
    with httpx.Client() as client:
        for body, sent, status, outcome in cases:
            before = metric(url, outcome)
            response = client.post(url, content=body, headers=sent)
            assert response.status_code == status, (outcome, response.text)
            assert metric(url, outcome) == before + 1
            if status == 400:
                assert response.json()["error"]
        # a chunked body (no content-length) over the limit is refused too
        response = client.post(url, content=iter([b"x" * 4096] * 3), headers=headers("response", "x"))
        assert response.status_code == 413
        send(url, 7, client)
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    wait_until(lambda: not read_traffic(sink["dir"]).empty, "the good event's record")
    assert set(read_traffic(sink["dir"])["request_id"]) == {"r-7"}


def test_a_killed_sink_loses_nothing_it_acknowledged_and_retries_are_read_once(sink):
    with httpx.Client() as client:
        for n in range(30):
            send(sink["url"], n, client)
        sink["process"].stop(kill=True)
        sink["process"].start()
        for n in range(25, 40):  # the logger resends what it is unsure of
            send(sink["url"], n, client)
    sink["process"].stop()  # SIGTERM: the sink compacts on the way out
    frame = read_traffic(sink["dir"])
    assert sorted(set(frame["request_id"]), key=lambda r: int(r[2:])) == [f"r-{n}" for n in range(40)]
    assert len(frame) == len(frame.drop_duplicates(["request_id", "instance"])) == 40 + 20  # odd ids: 2 queries
    assert not list(Path(sink["dir"], "_wal").glob("segment-*"))


def test_the_sink_overlay_validates_offline_and_prod_logs_to_it(tmp_path):
    """Rendered with kubectl kustomize, checked with kubernetes-validate --strict and the KServe CRD schema (no
    API server here): the sink's command and config load, and prod's transformer logger names its Service."""
    import subprocess

    from typer.main import get_command

    from relevance.cli import app
    from relevance.config import load_config
    from relevance.serving.canary.manifests import (
        KUBERNETES_VERSION,
        SINK_OVERLAY,
        inference_service,
        overlay_dir,
        render,
        validate,
    )

    resources = render(overlay_dir(SINK_OVERLAY))
    kinds = {r["kind"]: r for r in resources}
    assert sorted(kinds) == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"]
    assert validate(resources) == []
    path = tmp_path
    manifest = path / "traffic-sink.yaml"
    manifest.write_text(yaml.safe_dump_all(resources))
    result = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k",
                             KUBERNETES_VERSION, str(manifest)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["relevance", "traffic-sink"]
    options = {p.opts[0] for p in get_command(app).commands["traffic-sink"].params if p.opts}
    assert {arg for arg in container["args"] if arg.startswith("--")} <= options
    config = kinds["ConfigMap"]["data"]["config.yaml"]
    (path / "sink-config.yaml").write_text(config)
    assert load_config(path / "sink-config.yaml").serving.traffic_segment_seconds == 60
    service = kinds["Service"]["metadata"]
    logger = inference_service(render(overlay_dir("prod")))["spec"]["transformer"]["logger"]
    assert logger == {"mode": "response",
                      "url": f"http://{service['name']}.{service['namespace']}.svc.cluster.local"}


def test_the_monitor_overlay_is_an_hourly_job_without_api_access(tmp_path):
    """The monitor's CronJob validates offline, runs `relevance monitor` with options that exist, fails the Job
    on exit 2, 3, 4 and 5 (no retry hides an alert), and its ServiceAccount has no Role and no token."""
    from typer.main import get_command

    from relevance.cli import app
    from relevance.config import load_config
    from relevance.serving.canary.manifests import MONITOR_OVERLAY, SINK_OVERLAY, overlay_dir, render, validate
    from relevance.serving.monitor import EXIT_DRIFT, EXIT_QUALITY, EXIT_TOO_FEW

    resources = render(overlay_dir(MONITOR_OVERLAY))
    kinds = {r["kind"]: r for r in resources}
    assert sorted(kinds) == ["ConfigMap", "CronJob", "ServiceAccount"]  # no Role, no RoleBinding
    assert validate(resources) == []
    job = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]
    (rule, _) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and {2, EXIT_DRIFT, EXIT_TOO_FEW, EXIT_QUALITY} <= set(
        rule["onExitCodes"]["values"])
    pod = job["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert kinds["ServiceAccount"]["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    options = {p.opts[0] for p in get_command(app).commands["monitor"].params if p.opts}
    assert {arg for arg in container["args"] if arg.startswith("--")} <= options
    (tmp_path / "config.yaml").write_text(kinds["ConfigMap"]["data"]["config.yaml"])
    assert load_config(tmp_path / "config.yaml").monitor.window_hours == 1
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    sink = {r["kind"]: r for r in render(overlay_dir(SINK_OVERLAY))}["PersistentVolumeClaim"]
    assert sink["metadata"]["name"] in claims and sink["spec"]["accessModes"] == ["ReadWriteMany"]
    broken = [dict(r, metadata={**r["metadata"], "name": "other"}) if r["kind"] == "CronJob" else r for r in resources]
    assert any("shipped CronJobs" in error for error in validate(broken))
