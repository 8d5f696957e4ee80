"""Running the pipeline on a cluster: submission through kfp.Client, and recurring runs with a KFP cron."""

from __future__ import annotations

import pytest


def test_submit_builds_a_kfp_client_run(monkeypatch):
    import kfp
    from relevance.pipelines import run as pipeline_run

    calls = {}

    class RecordingClient:
        def __init__(self, host, namespace=None, existing_token=None):
            calls["client"] = (host, namespace, existing_token)

        def create_run_from_pipeline_func(self, pipeline_func, arguments, experiment_name, run_name, namespace):
            calls["run"] = (pipeline_func.name, arguments, experiment_name, namespace)
            return type("Result", (), {"run_id": "run-123"})()

    monkeypatch.setattr(kfp, "Client", RecordingClient)
    result = pipeline_run.submit("https://kfp.example.com", "default", {"registry": {"min_ndcg": 0.85}},
                                 "relevance", namespace="team-search")
    assert result.run_id == "run-123"
    assert calls["client"] == ("https://kfp.example.com", "team-search", None)
    name, arguments, experiment, namespace = calls["run"]
    assert name == "relevance-distillation-training" and experiment == "relevance"
    assert arguments == {"profile": "default", "overrides_json": '{"registry": {"min_ndcg": 0.85}}', "refresh": False}
    with pytest.raises(ValueError):  # a bad setting fails before anything reaches the cluster
        pipeline_run.submit("https://kfp.example.com", "default", {"registry": {"min_ndcg": 3}}, "relevance")


def test_schedule_refuses_a_cron_kfp_would_misread(cli):
    from relevance.pipelines.run import check_cron

    assert check_cron("0 0 3 * * *") == "0 0 3 * * *" and check_cron("@every 24h") == "@every 24h"
    with pytest.raises(ValueError, match="six fields, seconds first"):
        check_cron("0 3 * * *")  # five-field Unix cron: KFP would read the 0 as seconds
    result = cli("pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * *", check=False)
    assert result.returncode == 2 and "six fields" in result.stderr  # before any connection attempt
