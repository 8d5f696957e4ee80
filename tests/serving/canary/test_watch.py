"""`relevance canary watch` acts on its decision by itself and safely: nothing without a canary, nothing on a hold
or a disagreement, rollback and promote through the same plans as the CLI, exit codes a CronJob can surface, and a
report that says what was done and why. Decisions are constructed here; test_watch_local.py shows the real thing."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml
from relevance.serving.canary import analysis, watch
from relevance.serving.canary.analysis import Decision
from relevance.serving.canary.rollout import CANARY as CANARY_ALIAS
from relevance.serving.canary.rollout import plan_start

from relevance.config import RunConfig
from relevance.platform.registry import CHAMPION

SLO_BREACH = "SLO breached: challenger p99 480.0 ms > SLO 300.0 ms"


class FakeTarget:
    """A traffic controller that records what it was sent."""

    def __init__(self, percent: int | None = 10, fail: bool = False):
        self.percent, self.fail, self.sent = percent, fail, []

    def describe(self) -> str:
        return "a fake traffic controller"

    def traffic(self) -> watch.Traffic:
        return watch.Traffic(self.percent)

    def command(self, plan) -> str:
        return f"fake {plan.action}"

    def send(self, plan) -> str:
        if self.fail:
            raise watch.CanaryError("the fake refused; nothing was changed")
        self.sent.append(plan)
        self.percent = watch.SplitterTarget.percent(plan)
        return f"fake: {plan.action}"


def _decided(action: str, *reasons: str):
    calls = []

    def decide_round():
        calls.append(1)
        return Decision(action, list(reasons), [], {}), {"servers": {"champion": "a", "challenger": "b"}}

    decide_round.calls = calls
    return decide_round


def _with_canary(registry_config, version: int = 2):
    config, registry = registry_config
    plan_start(config, registry, version, 10).apply_registry()
    return config, registry


def test_no_canary_is_nothing_to_do(registry_config, tmp_path):
    config, registry = registry_config
    target, decide_round = FakeTarget(), _decided(analysis.ROLLBACK, SLO_BREACH)
    result = watch.watch_round(config, registry, target, decide_round, tmp_path / "out")
    assert (result.status, result.exit_code, result.acted) == (watch.NO_CANARY, watch.EXIT_OK, False)
    assert "no 'canary' alias" in result.action and "nothing was changed" in result.action
    assert decide_round.calls == [] and target.sent == [] and not (tmp_path / "out").exists()
    assert watch.aliases(registry, config.registry.student_name) == {CHAMPION: 1}


def test_a_breach_is_rolled_back_and_reported(registry_config, tmp_path):
    config, registry = _with_canary(registry_config)
    name = config.registry.student_name
    target = FakeTarget(percent=10)
    result = watch.watch_round(config, registry, target, _decided(analysis.ROLLBACK, SLO_BREACH), tmp_path)
    assert (result.status, result.exit_code, result.acted) == (analysis.ROLLBACK, watch.EXIT_ROLLED_BACK, True)
    assert [p.action for p in target.sent] == ["rollback"] and target.percent == 0
    assert target.sent[0].patch["spec"]["predictor"]["canaryTrafficPercent"] == 0  # rollout.plan_rollback's own
    assert registry.alias_version(name, CANARY_ALIAS) is None and registry.alias_version(name, CHAMPION) == 1
    assert registry.client.get_model_version(name, "2").tags["canary"] == "rolled back"
    report = json.loads((tmp_path / "canary-analysis.json").read_text())
    assert report["decision"] == "rollback" and report["reasons"] == [SLO_BREACH]
    context = report["context"]
    assert context["action"].startswith("rolled back: fake: rollback; registry: relevance-student: canary alias v2")
    assert context["aliases_before"] == {CANARY_ALIAS: 2, CHAMPION: 1} and context["aliases_after"] == {CHAMPION: 1}
    assert context["traffic_before"] == 10 and context["command"] == "fake rollback"
    assert "- action: rolled back: fake: rollback" in (tmp_path / "canary-analysis.md").read_text()


def test_hold_changes_nothing(registry_config, tmp_path):
    config, registry = _with_canary(registry_config)
    target = FakeTarget()
    result = watch.watch_round(config, registry, target,
                               _decided(analysis.HOLD, "too few queries to decide on labelled (3 < 20)"), tmp_path)
    assert (result.status, result.exit_code, result.acted) == (analysis.HOLD, watch.EXIT_OK, False)
    assert target.sent == [] and target.percent == 10
    assert watch.aliases(registry, config.registry.student_name) == {CANARY_ALIAS: 2, CHAMPION: 1}
    assert json.loads((tmp_path / "canary-analysis.json").read_text())["context"]["action"].startswith("none: hold")


def test_promote_is_applied_unless_auto_promote_is_off(registry_config, tmp_path):
    config, registry = _with_canary(registry_config)
    name = config.registry.student_name
    config.canary.auto_promote = False
    target = FakeTarget()
    held = watch.watch_round(config, registry, target, _decided(analysis.PROMOTE, "better beyond noise"), tmp_path)
    assert (held.exit_code, held.acted, target.sent) == (watch.EXIT_OK, False, [])
    assert "canary.auto_promote is off" in held.action and registry.alias_version(name, CHAMPION) == 1
    config.canary.auto_promote = True
    promoted = watch.watch_round(config, registry, target, _decided(analysis.PROMOTE, "better beyond noise"), tmp_path)
    assert (promoted.exit_code, promoted.acted, target.percent) == (watch.EXIT_OK, True, 100)
    assert registry.alias_version(name, CHAMPION) == 2 and registry.alias_version(name, CANARY_ALIAS) is None


def test_dry_run_decides_and_changes_nothing(registry_config, tmp_path):
    config, registry = _with_canary(registry_config)
    target = FakeTarget()
    result = watch.watch_round(config, registry, target, _decided(analysis.ROLLBACK, SLO_BREACH), tmp_path,
                               dry_run=True)
    assert (result.status, result.exit_code, result.acted, target.sent) == (analysis.ROLLBACK, 0, False, [])
    assert result.action.startswith("none (--dry-run): would rollback with fake rollback")
    assert watch.aliases(registry, config.registry.student_name) == {CANARY_ALIAS: 2, CHAMPION: 1}


@pytest.mark.parametrize("percent,says", [(None, "sends it no traffic"), (0, "sends it 0% traffic")])
def test_registry_and_traffic_that_disagree_are_left_to_a_person(registry_config, tmp_path, percent, says):
    config, registry = _with_canary(registry_config)
    target, decide_round = FakeTarget(percent), _decided(analysis.ROLLBACK, SLO_BREACH)
    with pytest.raises(watch.WatchError, match=says + r".*half done.*nothing was changed") as error:
        watch.watch_round(config, registry, target, decide_round, tmp_path)
    assert error.value.exit_code == watch.EXIT_NOT_DONE
    assert decide_round.calls == [] and target.sent == []
    assert watch.aliases(registry, config.registry.student_name) == {CANARY_ALIAS: 2, CHAMPION: 1}


def test_a_rollback_that_cannot_be_sent_leaves_the_registry_and_says_so(registry_config, tmp_path):
    config, registry = _with_canary(registry_config)
    with pytest.raises(watch.WatchError, match="the fake refused") as error:
        watch.watch_round(config, registry, FakeTarget(fail=True), _decided(analysis.ROLLBACK, SLO_BREACH), tmp_path)
    assert error.value.exit_code == watch.EXIT_NOT_DONE
    assert watch.aliases(registry, config.registry.student_name) == {CANARY_ALIAS: 2, CHAMPION: 1}
    assert json.loads((tmp_path / "canary-analysis.json").read_text())["context"]["action"].startswith(
        "FAILED to rollback: the fake refused")


def test_a_registry_that_does_not_answer_is_not_a_quiet_round(registry_config, tmp_path, monkeypatch):
    """A registry down before the round starts (nothing listens at the URI): no evidence is gathered. A real
    server dying mid-round, and coming back, is tests/platform/test_mlflow_server.py's."""
    from relevance.platform.registry import Registry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's default backs off for minutes
    config, _ = registry_config
    config.registry.tracking_uri = "http://127.0.0.1:9"  # nothing listens there
    down = Registry(config.registry)
    target, decide_round = FakeTarget(), _decided(analysis.ROLLBACK, SLO_BREACH)
    with pytest.raises(watch.WatchError, match="did not answer .* nothing was changed") as raised:
        watch.watch_round(config, down, target, decide_round, tmp_path)
    assert raised.value.exit_code == watch.EXIT_NOT_DONE and decide_round.calls == [] and target.sent == []


def test_a_canary_that_moved_during_the_round_is_left_alone(registry_config, tmp_path):
    from relevance.serving.canary.rollout import plan_promote

    config, registry = _with_canary(registry_config)
    target = FakeTarget()

    def someone_promotes_meanwhile():
        plan_promote(config, registry).apply_registry()
        return Decision(analysis.ROLLBACK, [SLO_BREACH], [], {}), {}

    with pytest.raises(watch.WatchError, match=r"rollback was decided for .* v2, but the 'canary' alias now names "
                                               r"nothing: someone else acted; nothing was changed"):
        watch.watch_round(config, registry, target, someone_promotes_meanwhile, tmp_path)
    assert target.sent == [] and watch.aliases(registry, config.registry.student_name) == {CHAMPION: 2}


def test_the_loop_holds_until_a_round_acts(registry_config, tmp_path, monkeypatch):
    config, registry = _with_canary(registry_config)
    decisions = iter([Decision(analysis.HOLD, ["noise"], [], {}), Decision(analysis.ROLLBACK, [SLO_BREACH], [], {})])
    opened = []

    class Evidence:
        def __enter__(self):
            opened.append(1)
            return {"champion": "http://a", "challenger": "http://b"}, None, None

        def __exit__(self, *_):
            opened.append(-1)

    def fake_assess(config, urls, dataset, teacher, before):
        return next(decisions), {"window": before}

    target = FakeTarget()
    monkeypatch.setattr(watch, "assess", fake_assess)
    result = watch.watch(config, registry, target, Evidence, tmp_path, rounds=5, every=0)
    assert (result.status, result.exit_code) == (analysis.ROLLBACK, watch.EXIT_ROLLED_BACK)
    assert opened == [1, -1]  # the servers are started once for all rounds, and stopped
    assert json.loads((tmp_path / "canary-analysis.json").read_text())["context"]["round"] == "2 of at most 5"
    with pytest.raises(ValueError, match="rounds: expected >= 1, got 0"):
        watch.watch(config, registry, target, Evidence, tmp_path, rounds=0)


def test_servers_that_do_not_start_are_no_evidence_and_change_nothing(registry_config, tmp_path):
    config, registry = _with_canary(registry_config)

    class NotReady:
        def __enter__(self):
            raise RuntimeError("server for http://127.0.0.1:1 exited with 2: predictor http://latest-… has no ready "
                               "model 'relevance-student'")

        def __exit__(self, *_):
            return False

    target = FakeTarget()
    with pytest.raises(watch.WatchError, match="no evidence this round, nothing was changed: server for .* no ready"):
        watch.watch(config, registry, target, NotReady, tmp_path)
    assert target.sent == [] and watch.aliases(registry, config.registry.student_name) == {CANARY_ALIAS: 2,
                                                                                           CHAMPION: 1}


def test_the_watch_settings_are_checked():
    with pytest.raises(ValueError, match="give both rerank servers or neither"):
        RunConfig.model_validate({"canary": {"champion_url": "http://a:1"}})
    with pytest.raises(ValueError, match=r"only placeholders are \{name\} and \{namespace\}, got 'http://\{model\}'"):
        RunConfig.model_validate({"canary": {"challenger_predictor_url": "http://{model}"}})
    with pytest.raises(ValueError, match="String should match pattern"):
        RunConfig.model_validate({"canary": {"champion_url": "localhost:1", "challenger_url": "http://b:1"}})


# ---- assess: the evidence of a round -----------------------------------------------------------------------


def _metrics(requests: int, errors: int, seconds: float) -> dict:
    return {"buckets": {seconds: float(requests), float("inf"): float(requests)},
            "outcomes": {"ok": float(requests - errors), "error": float(errors)}}


def _scrapes(monkeypatch, sequence: dict[str, list[dict]]):
    def scrape(url):
        return sequence[url].pop(0)

    monkeypatch.setattr(analysis, "scrape", scrape)


def test_a_replay_cut_short_by_server_errors_rolls_back_on_its_slo_window(monkeypatch):
    config = RunConfig()

    def failing_analyze(*args, **kwargs):
        raise watch.ScoreError("http://b: fault injected by the revision proxy of the challenger (abort 40%)")

    monkeypatch.setattr(analysis, "analyze", failing_analyze)
    zero = _metrics(0, 0, 0.01)
    _scrapes(monkeypatch, {"http://a": [zero, _metrics(12, 0, 0.01), _metrics(12, 0, 0.01)],
                           "http://b": [zero, _metrics(4, 1, 0.01), _metrics(4, 1, 0.01)]})
    decision, after = watch.assess(config, {"champion": "http://a", "challenger": "http://b"}, None, None)
    assert decision.action == analysis.ROLLBACK
    assert decision.reasons[0] == "SLO breached: challenger error rate 25.00% > SLO 1.00%"
    assert decision.reasons[-1].startswith("the replay stopped at a failed request (http://b: fault injected")
    assert after["challenger"]["outcomes"]["error"] == 1.0


def test_a_failed_replay_without_a_breach_holds(monkeypatch):
    config = RunConfig()
    monkeypatch.setattr(analysis, "analyze", lambda *a, **k: (_ for _ in ()).throw(watch.ScoreError("a: refused")))
    zero = _metrics(0, 0, 0.01)
    _scrapes(monkeypatch, {"http://a": [zero, _metrics(3, 0, 0.01), zero], "http://b": [zero, zero, zero]})
    decision, _ = watch.assess(config, {"champion": "http://a", "challenger": "http://b"}, None, None)
    assert decision.action == analysis.HOLD and decision.quality == []
    assert "no quality evidence, and no SLO breach" in decision.reasons[0]


def test_a_breach_on_live_traffic_rolls_back_before_any_replay(monkeypatch):
    config = RunConfig()
    monkeypatch.setattr(analysis, "analyze", lambda *a, **k: pytest.fail("replayed despite a breach"))
    _scrapes(monkeypatch, {"http://a": [_metrics(50, 0, 0.01)], "http://b": [_metrics(20, 0, 0.5)]})
    before = {"champion": _metrics(0, 0, 0.01), "challenger": _metrics(0, 0, 0.5)}
    decision, after = watch.assess(config, {"champion": "http://a", "challenger": "http://b"}, None, None, before)
    assert decision.action == analysis.ROLLBACK and decision.reasons[0].startswith("SLO breached: challenger p99")
    assert decision.reasons[-1] == "decided on the traffic since the last round, before any replay"
    assert after["challenger"]["outcomes"]["ok"] == 20.0


# ---- the cluster target: kubectl ---------------------------------------------------------------------------


ISVC = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "relevance-student", "namespace": "relevance"},
        "spec": {"predictor": {"canaryTrafficPercent": 10}},
        "status": {"components": {"predictor": {
            "latestRolledoutRevision": "relevance-student-predictor-00002",
            "previousRolledoutRevision": "relevance-student-predictor-00001",
            "traffic": [{"tag": "prev", "revisionName": "relevance-student-predictor-00001", "percent": 90},
                        {"tag": "latest", "revisionName": "relevance-student-predictor-00002", "percent": 10}]}}}}


def test_cluster_rollback_sends_the_exact_kubectl_patch(cloud_registry, fake_kubectl, tmp_path):
    from relevance.serving.canary.rollout import plan_rollback

    config, registry = cloud_registry
    config.canary.kubectl = str(fake_kubectl(ISVC))
    expected = plan_rollback(config, registry).command
    result = watch.watch_round(config, registry, watch.ClusterTarget(config),
                               _decided(analysis.ROLLBACK, SLO_BREACH), tmp_path)
    assert result.exit_code == watch.EXIT_ROLLED_BACK
    calls = [json.loads(line) for line in (tmp_path / "kubectl.calls").read_text().splitlines()]
    assert calls[0] == ["get", "inferenceservice", "relevance-student", "--namespace", "relevance", "-o", "json"]
    assert calls[1:] == [expected[1:]]
    patch = json.loads(expected[-1])["spec"]["predictor"]
    assert patch == {"canaryTrafficPercent": 0, "model": {
        "storageUri": "s3://relevance-mlflow/artifacts/1/model/onnx/model_repository"}}
    assert registry.alias_version(config.registry.student_name, CANARY_ALIAS) is None
    context = json.loads((tmp_path / "canary-analysis.json").read_text())["context"]
    assert context["traffic_detail"]["previousRolledoutRevision"] == "relevance-student-predictor-00001"
    assert context["command"] == shlex.join(expected)  # the report holds the command a person can rerun


def test_cluster_refuses_a_storage_uri_kserve_cannot_fetch_and_patches_nothing(registry_config, fake_kubectl,
                                                                                tmp_path):
    config, registry = _with_canary(registry_config)  # the local registry's file:// sources
    config.canary.kubectl = str(fake_kubectl(ISVC))
    with pytest.raises(watch.WatchError, match="not one KServe's storage initializer can fetch"):
        watch.watch_round(config, registry, watch.ClusterTarget(config), _decided(analysis.ROLLBACK, SLO_BREACH),
                          tmp_path)
    calls = [json.loads(line)[0] for line in (tmp_path / "kubectl.calls").read_text().splitlines()]
    assert calls == ["get"]  # read, never patched
    assert watch.aliases(registry, config.registry.student_name) == {CANARY_ALIAS: 2, CHAMPION: 1}


def test_transformers_are_started_on_the_revision_tag_urls(monkeypatch, tmp_path):
    from contextlib import contextmanager

    config = RunConfig()
    started = []

    @contextmanager
    def fake_server(args, port, log):
        started.append(args)
        yield f"http://127.0.0.1:{port}"

    monkeypatch.setattr(watch, "model_server", fake_server)
    with watch.rerank_servers(config, ["--config", "c.yaml"], tmp_path / "bundle", tmp_path / "repo",
                              tmp_path) as urls:
        assert set(urls) == {"champion", "challenger"}
    predictors = [a[a.index("--predictor-url") + 1] for a in started]
    assert predictors == ["http://prev-relevance-student-predictor.relevance.svc.cluster.local",
                          "http://latest-relevance-student-predictor.relevance.svc.cluster.local"]
    assert started[0][:3] == ["serve", "--config", "c.yaml"]
    with pytest.raises(ValueError, match="need a serving bundle: got none"):
        with watch.rerank_servers(config, [], None, tmp_path, tmp_path):
            pass


# ---- the command line --------------------------------------------------------------------------------------


def test_cli_without_a_canary_exits_0_and_validates_its_input(cli, registry_config, tmp_path):
    config, registry = registry_config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "run"),
                                    "registry": {"tracking_uri": config.registry.tracking_uri}}))
    quiet = cli("canary", "watch", "-c", path, "--splitter-url", "http://127.0.0.1:9", "--champion-url",
                "http://127.0.0.1:8", "--challenger-url", "http://127.0.0.1:7")
    assert "no 'canary' alias" in quiet.stdout and "nothing was changed" in quiet.stdout
    one = cli("canary", "watch", "-c", path, "--champion-url", "http://127.0.0.1:8", check=False)
    assert one.returncode == 2 and "give both rerank servers or neither" in one.stderr
    local = cli("canary", "watch", "-c", path, "--splitter-url", "http://127.0.0.1:9", check=False)
    assert local.returncode == 2 and "--splitter-url (the local loop) needs --champion-url" in local.stderr
    bad = cli("canary", "watch", "-c", path, "--rounds", "0", check=False)
    assert bad.returncode == 2 and "greater than or equal to 1" in bad.stderr
    # A canary, and no kubectl: said before any analysis, and nothing changes.
    plan_start(config, registry, 2, 10).apply_registry()
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "run"), "canary": {"kubectl": "no-such-kubectl"},
                                    "registry": {"tracking_uri": config.registry.tracking_uri}}))
    missing = cli("canary", "watch", "-c", path, check=False)
    assert missing.returncode == 2 and "'no-such-kubectl' is not on PATH" in missing.stderr
    assert watch.aliases(registry, config.registry.student_name) == {CANARY_ALIAS: 2, CHAMPION: 1}


def test_a_canary_alias_removed_just_before_the_rollback_never_rolls_back_the_champion(registry_config, tmp_path,
                                                                                        monkeypatch):
    """The round analysed canary v3 with champion v2 (promoted from v1). The canary alias goes away between the
    round's last check and the rollback's own read of the aliases: the plan must not take the 'undo the last
    promotion' branch (moving the champion back to v1); the round changes nothing and exits 4."""
    from relevance.serving.canary.rollout import plan_promote

    config, registry = _with_canary(registry_config)  # canary v2, champion v1
    name = config.registry.student_name
    plan_promote(config, registry).apply_registry()  # champion v2, v1 kept for rollback
    registry.client.set_registered_model_alias(name, CANARY_ALIAS, "3")
    real_aliases, reads = watch.aliases, []

    def aliases_then_someone_ends_the_canary(registry_, name_):
        found = real_aliases(registry_, name_)
        reads.append(found)
        if len(reads) == 1:  # the round has read its canary: someone ends it before the rollback is planned
            registry.client.delete_registered_model_alias(name, CANARY_ALIAS)
        return found

    monkeypatch.setattr(watch, "aliases", aliases_then_someone_ends_the_canary)
    target = FakeTarget()
    with pytest.raises(watch.WatchError, match="decided for .* v3, but the 'canary' alias now names nothing") as raised:
        watch.watch_round(config, registry, target, _decided(analysis.ROLLBACK, SLO_BREACH), tmp_path)
    assert raised.value.exit_code == watch.EXIT_NOT_DONE and target.sent == []
    assert registry.alias_version(name, CHAMPION) == 2


def test_a_challenger_restart_between_rounds_is_rolled_back_not_bad_input(registry_config, tmp_path, monkeypatch):
    """Round 1 holds; the challenger restarts before round 2 (its counters go down): round 2 rolls it back on the
    SLO window since round 1, and never exits 2 (bad input, which the CronJob does not retry)."""
    config, registry = _with_canary(registry_config)
    scrapes = {"champion": [], "challenger": []}

    def fake_scrape(url):
        server = "champion" if url == "http://a" else "challenger"
        served, started = 100.0 * (len(scrapes[server]) + 1), 1000.0
        if server == "challenger" and len(scrapes[server]) >= 2:
            served, started = 3.0, 2000.0  # restarted: counters back near zero, a later process start
        scrapes[server].append(served)
        return {"buckets": {0.005: served, float("inf"): served}, "outcomes": {"ok": served},
                "instance": f"{server}-pod", "started": started}

    class Evidence:
        def __enter__(self):
            return {"champion": "http://a", "challenger": "http://b"}, None, None

        def __exit__(self, *_):
            return None

    monkeypatch.setattr(analysis, "scrape", fake_scrape)
    monkeypatch.setattr(analysis, "analyze", lambda *a, **k: Decision(analysis.HOLD, ["noise"], [], {}))
    target = FakeTarget()
    result = watch.watch(config, registry, target, Evidence, tmp_path, rounds=2, every=0)
    assert (result.status, result.exit_code) == (analysis.ROLLBACK, watch.EXIT_ROLLED_BACK)
    assert any("restarted" in reason for reason in result.decision.reasons)
    assert [p.action for p in target.sent] == ["rollback"]


def test_a_fault_while_gathering_evidence_exits_4(registry_config, tmp_path, monkeypatch):
    config, registry = _with_canary(registry_config)

    class Evidence:
        def __enter__(self):
            return {"champion": "http://a", "challenger": "http://b"}, None, None

        def __exit__(self, *_):
            return None

    def broken(*_args, **_kwargs):
        raise analysis.EvidenceError("the two scrapes reached different instances")

    monkeypatch.setattr(watch, "assess", broken)
    with pytest.raises(watch.WatchError, match="no evidence this round") as raised:
        watch.watch(config, registry, FakeTarget(), Evidence, tmp_path)
    assert raised.value.exit_code == watch.EXIT_NOT_DONE
    from relevance.data.schema import DataContractError

    def bad_data(*_args, **_kwargs):
        raise DataContractError("judgments: split 'test' is empty")

    monkeypatch.setattr(watch, "assess", bad_data)  # bad input stays bad input: the CLI's exit 2
    with pytest.raises(DataContractError):
        watch.watch(config, registry, FakeTarget(), Evidence, tmp_path)


# ---- the watch as a library function (what `relevance canary watch` and the CronJob call) -------------------------


def test_watch_canary_checks_its_urls_and_leaves_the_config_alone(registry_config, tmp_path):
    config, _ = registry_config
    with pytest.raises(ValueError, match="give both rerank servers or neither"):
        watch.watch_canary(config, ["--profile", "quick"], champion_url="http://127.0.0.1:8")
    with pytest.raises(ValueError, match="--splitter-url \\(the local loop\\) needs --champion-url"):
        watch.watch_canary(config, ["--profile", "quick"], splitter_url="http://127.0.0.1:9")
    quiet = watch.watch_canary(config, ["--profile", "quick"], "http://127.0.0.1:8", "http://127.0.0.1:7",
                               splitter_url="http://127.0.0.1:9")
    assert (quiet.status, quiet.exit_code) == (watch.NO_CANARY, watch.EXIT_OK)
    assert config.canary.champion_url == "", "the caller's config is not changed"
    assert not (tmp_path / "run").exists(), "no canary: no dataset read, no server started"


def test_watch_canary_gathers_its_evidence_once_a_canary_runs(registry_config, tmp_path, monkeypatch):
    """The round's evidence: the run's dataset, the judge, then transformers on the predictor revisions loading
    the registry champion's bundle (no rerank servers configured); the reports go to workdir/canary-watch."""
    from contextlib import contextmanager

    import relevance.chain
    from relevance.serving.canary import local

    config, _ = _with_canary(registry_config)
    seen = {}

    @contextmanager
    def servers(config_, settings, bundle, feature_repo, out_dir, log):
        seen["servers"] = (settings, bundle, feature_repo, out_dir)
        yield {"champion": "http://a", "challenger": "http://b"}

    def fake_watch(config_, registry, target, evidence, out_dir, rounds, every, dry_run, log):
        seen["target"], seen["out"], seen["rounds"] = target, out_dir, (rounds, every, dry_run)
        with evidence() as gathered:
            seen["evidence"] = gathered
        return "result"

    chain = type("Chain", (), {"dataset": lambda self, **kw: "data"})
    monkeypatch.setattr(relevance.chain, "Chain", lambda config: chain())
    monkeypatch.setattr(local, "judge_teacher", lambda config, teacher_dir, judge: ("judge", teacher_dir, judge))
    monkeypatch.setattr(local, "registry_bundle", lambda config, alias, directory: f"{alias} bundle")
    monkeypatch.setattr(watch, "rerank_servers", servers)
    monkeypatch.setattr(watch, "watch", fake_watch)
    assert watch.watch_canary(config, ["--profile", "quick"], judge=False, rounds=3, every=5.0) == "result"
    run = tmp_path / "run"
    assert isinstance(seen["target"], watch.ClusterTarget) and seen["out"] == run / "canary-watch"
    assert seen["rounds"] == (3, 5.0, False)
    assert seen["servers"] == (["--profile", "quick"], "champion bundle", run / "feature_repo", run / "canary-watch")
    assert seen["evidence"] == ({"champion": "http://a", "challenger": "http://b"}, "data", ("judge", None, False))
