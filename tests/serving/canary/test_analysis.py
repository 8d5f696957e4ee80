"""The canary analysis decides constructed win / loss / noise / SLO cases right, and writes its report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from relevance.serving.canary import analysis

from relevance.config import CanaryConfig

CANARY = CanaryConfig(min_queries=20, bootstrap_samples=2000, seed=0)


HEALTHY = {"champion": analysis.SloEvidence("champion", 500, 0, 4.0, 8.0),
           "challenger": analysis.SloEvidence("challenger", 500, 1, 4.2, 8.5)}


def _evidence(mean_diff: float, spread: float, n: int = 80, seed: int = 1) -> analysis.QualityEvidence:
    rng = np.random.default_rng(seed)
    champion = rng.uniform(0.3, 0.9, n)
    challenger = np.clip(champion + mean_diff + rng.normal(0, spread, n), 0, 1)
    return analysis.compare("labelled", "ndcg@20", champion, challenger, CANARY)


def test_clear_win_promotes():
    decision = analysis.decide([_evidence(0.08, 0.05)], HEALTHY, CANARY)
    assert decision.action == analysis.PROMOTE, decision.reasons
    assert decision.quality[0].ci_low > 0


def test_clear_loss_rolls_back():
    decision = analysis.decide([_evidence(-0.08, 0.05)], HEALTHY, CANARY)
    assert decision.action == analysis.ROLLBACK and "worse beyond noise" in decision.reasons[0]


def test_noise_holds():
    decision = analysis.decide([_evidence(0.0, 0.1)], HEALTHY, CANARY)
    assert decision.action == analysis.HOLD, decision.reasons
    assert decision.quality[0].ci_low < 0 < decision.quality[0].ci_high


def test_too_few_queries_hold_even_when_the_mean_is_better():
    decision = analysis.decide([_evidence(0.08, 0.01, n=5)], HEALTHY, CANARY)
    assert decision.action == analysis.HOLD and "too few queries" in decision.reasons[0]


def test_a_judged_win_alone_holds_unless_the_judge_may_promote():
    judged = _evidence(0.08, 0.05, seed=2)
    judged.name = analysis.JUDGE
    noise = _evidence(0.0, 0.1)
    decision = analysis.decide([noise, judged], HEALTHY, CANARY)
    assert decision.action == analysis.HOLD and "cannot promote alone" in " ".join(decision.reasons)
    trusting = CANARY.model_copy(update={"judge_can_promote": True})
    assert analysis.decide([noise, judged], HEALTHY, trusting).action == analysis.PROMOTE


def test_a_judge_that_sees_a_loss_blocks_promotion():
    judged = _evidence(-0.1, 0.05, seed=2)
    judged.name = analysis.JUDGE
    decision = analysis.decide([_evidence(0.08, 0.05), judged], HEALTHY, CANARY)
    assert decision.action == analysis.ROLLBACK and "teacher judge" in " ".join(decision.reasons)


@pytest.mark.parametrize("challenger,reason", [
    (analysis.SloEvidence("challenger", 500, 50, 4.0, 8.0), "error rate 10.00% > SLO 1.00%"),
    (analysis.SloEvidence("challenger", 500, 0, 40.0, 150.0), "p99 150.0 ms > SLO 100.0 ms"),
    (analysis.SloEvidence("challenger", 500, 0, 6.0, 20.0), "> 1.5 × champion's 8.0 ms"),
])
def test_slo_breach_rolls_back_a_better_model(challenger, reason):
    decision = analysis.decide([_evidence(0.08, 0.05)], {**HEALTHY, "challenger": challenger}, CANARY)
    assert decision.action == analysis.ROLLBACK and any(reason in r for r in decision.reasons), decision.reasons


def test_no_challenger_traffic_is_not_evidence():
    silent = {**HEALTHY, "challenger": analysis.SloEvidence("challenger", 0, 0, None, None)}
    assert analysis.decide([_evidence(0.08, 0.05)], silent, CANARY).action == analysis.HOLD


def test_a_challenger_that_restarted_in_the_window_is_rolled_back():
    """The same instance with a later process start is a restart (a crash, an OOM kill): for the challenger a
    breach, even when the requests it served since look healthy; a restarted champion is only no yardstick for
    the p99. Another instance (a second replica) or counters that go down with no identity are no window at all."""
    before = {"buckets": {0.01: 50.0, float("inf"): 60.0}, "outcomes": {"ok": 60.0}, "instance": "pod-a",
              "started": 100.0}
    after = {"buckets": {0.01: 5.0, float("inf"): 6.0}, "outcomes": {"ok": 6.0}, "instance": "pod-a",
             "started": 200.0}
    window = analysis.slo_window("challenger", before, after)
    assert window.restarted and window.requests == 6  # what it served since the restart
    decision = analysis.decide([_evidence(0.08, 0.05)], {**HEALTHY, "challenger": window}, CANARY)
    assert decision.action == analysis.ROLLBACK and "restarted" in decision.reasons[0]
    champion = analysis.slo_window("champion", before, after)
    slow = analysis.SloEvidence("challenger", 500, 0, 6.0, 20.0)
    assert analysis.decide([_evidence(0.08, 0.05)], {"champion": champion, "challenger": slow},
                           CANARY).action == analysis.PROMOTE
    # A healthy second replica that served a little less: never a restart, never a rollback.
    replica = {**after, "buckets": {0.01: 45.0, float("inf"): 49.0}, "outcomes": {"ok": 49.0}, "instance": "pod-b"}
    with pytest.raises(analysis.EvidenceError, match="different instances"):
        analysis.slo_window("challenger", before, replica)
    anonymous = [{k: v for k, v in m.items() if k not in ("instance", "started")} for m in (before, after)]
    with pytest.raises(analysis.EvidenceError, match="went down"):
        analysis.slo_window("challenger", *anonymous)


def test_the_server_says_which_process_its_counters_belong_to():
    import socket
    import time

    from prometheus_client import generate_latest
    from relevance.serving.server import metrics

    metrics()
    parsed = analysis.parse_metrics(generate_latest().decode())
    assert parsed["instance"] == socket.gethostname()
    assert parsed["started"] is not None and time.time() - 86400 < parsed["started"] <= time.time()


def test_a_loss_on_too_few_queries_holds():
    decision = analysis.decide([_evidence(-0.08, 0.01, n=5)], HEALTHY, CANARY)
    assert decision.action == analysis.HOLD and "too few queries" in decision.reasons[0]


def test_slo_window_reads_prometheus_metrics():
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    registry = CollectorRegistry()
    seconds = Histogram("relevance_request_seconds", "", ["model_name", "protocol"], registry=registry,
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.05))
    requests = Counter("relevance_requests", "", ["model_name", "protocol", "outcome"], registry=registry)
    before = analysis.parse_metrics(generate_latest(registry).decode())
    for value in [0.0015] * 90 + [0.008] * 10:
        seconds.labels("m", "v2").observe(value)
    requests.labels("m", "v2", "ok").inc(97)
    requests.labels("m", "v2", "error").inc(3)
    requests.labels("m", "v1", "bad_request").inc(5)  # the client's fault: not an SLO error
    window = analysis.slo_window("challenger", before, analysis.parse_metrics(generate_latest(registry).decode()))
    assert (window.requests, window.errors) == (105, 3)
    assert 1.0 < window.p50_ms <= 2.0  # inside the (1 ms, 2 ms] bucket
    assert 5.0 < window.p99_ms <= 10.0
    assert analysis.histogram_quantile(0.5, {}) is None


def test_report_is_written_as_markdown_and_json(tmp_path):
    decision = analysis.decide([_evidence(0.08, 0.05)], HEALTHY, CANARY)
    md, js = analysis.write_report(decision, tmp_path, {"note": "constructed"})
    assert "**Decision: PROMOTE**" in md.read_text() and "| labelled | ndcg@20 |" in md.read_text()
    assert json.loads(js.read_text())["decision"] == "promote"
