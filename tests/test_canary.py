"""Deployment and canary, all offline: the kustomize overlays render and validate (kubernetes-validate --strict
for built-in kinds, the KServe schema and canary checks for InferenceService and ServingRuntime), the canary
patches round-trip through `kubectl patch --local` and validate again, the registry aliases follow, the
analysis decides constructed win / loss / noise cases right, and a local canary runs end to end with two
different students.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import tiny_run_settings
from relevance.config import CanaryConfig, RunConfig
from serving import canary_analysis as analysis
from serving.canary import (CANARY as CANARY_ALIAS, CanaryError, dry_run, model_repository_uri,
                            plan_promote, plan_rollback, plan_start)
from serving.canary_manifests import (INFRA, OVERLAYS, KUBERNETES_VERSION, inference_service, patch_local, render,
                                      validate)

CLI = [sys.executable, "-m", "relevance.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RELEVANCE_THREADS": "1"}


def _run(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"relevance {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(INFRA / "overlays" / overlay) for overlay in OVERLAYS}


# ------------------------------------------------------------------------------------------------------------
# Manifests
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_is_valid(rendered, overlay, tmp_path):
    resources = rendered[overlay]
    assert {r["kind"] for r in resources} == {"ServiceAccount", "ConfigMap", "ServingRuntime", "InferenceService"}
    assert validate(resources) == []
    # The built-in kinds through the kubernetes-validate command itself, strictly.
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(resources))
    result = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k",
                             KUBERNETES_VERSION, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource serviceaccount/relevance-models" in result.stdout + result.stderr
    assert "passed for resource configmap/relevance-serving-" in result.stdout + result.stderr


def test_overlays_differ_where_they_should(rendered):
    isvc = {overlay: inference_service(rendered[overlay]) for overlay in OVERLAYS}
    assert isvc["dev"]["metadata"]["namespace"] == "relevance-dev"
    assert isvc["dev"]["spec"]["predictor"]["minReplicas"] == 0
    assert isvc["prod"]["spec"]["predictor"]["minReplicas"] >= 2
    assert "canaryTrafficPercent" not in isvc["prod"]["spec"]["predictor"]
    assert isvc["canary"]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    for resource in isvc.values():
        annotations = resource["metadata"]["annotations"]
        assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"
        model = resource["spec"]["predictor"]["model"]
        assert (model["modelFormat"]["name"], model["runtime"], model["protocolVersion"]) == \
            ("onnx", "relevance-triton", "v2")
        container = resource["spec"]["transformer"]["containers"][0]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert resource["spec"]["transformer"]["securityContext"]["runAsNonRoot"] is True
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["resources"]["limits"] and container["resources"]["requests"]
        assert resource["spec"]["predictor"]["annotations"]["prometheus.io/scrape"] == "true"
        # kustomize substituted the generated ConfigMap's hashed name inside the CRD (kustomizeconfig.yaml).
        generated = [r["metadata"]["name"] for r in rendered["prod"] if r["kind"] == "ConfigMap"][0]
        assert resource["spec"]["transformer"]["volumes"][0]["configMap"]["name"] == generated


def _mutate(path: str, value):
    def apply(isvc):
        *parents, leaf = path.split(".")
        node = isvc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return apply


BROKEN = [
    ("spec.predictor.canaryTraficPercent", 10, "'canaryTraficPercent' was unexpected"),
    ("spec.predictor.canaryTrafficPercent", 150, "expected an integer in 0..100, got 150"),
    ("spec.predictor.canaryTrafficPercent", -1, "expected an integer in 0..100, got -1"),
    ("spec.predictor.canaryTrafficPercent", "10", "'10' is not of type 'integer'"),
    ("spec.predictor.canaryTrafficPercent", True, "expected an integer in 0..100, got True"),
    ("spec.predictor.model.runtime", "kserve-sklearnserver", "is not a ServingRuntime in these manifests"),
    ("spec.predictor.model.modelFormat.name", "sklearn", "expected 'onnx'"),
    ("spec.predictor.model.protocolVersion", "v1", "expected 'v2'"),
    ("spec.predictor.model.storageUri", "file:///tmp/model", "is not a URI KServe's storage initializer can fetch"),
    ("spec.predictor.minReplicas", "two", "'two' is not of type 'integer'"),
    ("spec.predictor", KeyError, "'predictor' is a required property"),
    ("spec.transformer.containers.0.resources.limits.cpu", [1], "is not valid under any of the given schemas"),
    ("spec.transformer.containers.0.imagePullPolicy", 5, "5 is not of type 'string', 'null'"),
]


@pytest.mark.parametrize("path,value,message", BROKEN, ids=[b[0] + "=" + repr(b[1]) for b in BROKEN])
def test_broken_inference_service_is_refused(rendered, path, value, message):
    resources = copy.deepcopy(rendered["prod"])
    _mutate(path, value)(inference_service(resources))
    errors = validate(resources)
    assert any(message in e for e in errors), errors


def test_canary_in_raw_deployment_mode_is_refused(rendered):
    resources = copy.deepcopy(rendered["canary"])
    isvc = inference_service(resources)
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    assert any("KServe ignores canaryTrafficPercent outside Serverless" in e for e in validate(resources))


def test_runtime_must_support_the_model(rendered):
    resources = copy.deepcopy(rendered["prod"])
    runtime = next(r for r in resources if r["kind"] == "ServingRuntime")
    runtime["spec"]["supportedModelFormats"] = [{"name": "tensorflow"}]
    runtime["spec"]["protocolVersions"] = ["v1"]
    errors = validate(resources)
    assert any("does not support model format 'onnx'" in e for e in errors), errors
    assert any("does not speak protocol 'v2'" in e for e in errors), errors


def test_builtin_kinds_are_checked_strictly(rendered):
    resources = copy.deepcopy(rendered["prod"])
    next(r for r in resources if r["kind"] == "ServiceAccount")["metadata"]["labelz"] = {}
    next(r for r in resources if r["kind"] == "ConfigMap")["data"]["x"] = 3
    errors = validate(resources)
    assert any("ServiceAccount/relevance-models: metadata: " in e and "'labelz' was unexpected" in e for e in errors)
    assert any("data.x: 3 is not of type 'string'" in e for e in errors), errors


def test_a_crd_file_can_supply_the_schema(rendered, tmp_path):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "inferenceservices.serving.kserve.io"},
           "spec": {"names": {"kind": "InferenceService"}, "versions": [{"name": "v1beta1", "schema": {
               "openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "required": [
                   "explainer"]}}}}}]}}
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(crd))
    errors = [e for e in validate(rendered["prod"], crd_file=str(tmp_path / "crd.yaml")) if "InferenceService" in e]
    assert any("'explainer' is a required property" in e for e in errors), errors


# ------------------------------------------------------------------------------------------------------------
# Canary patches and the registry
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def registry_config(tmp_path):
    """A registry with champion v1 and two more versions (v3 computes other features)."""
    from relevance.registry import CHAMPION, Registry

    config = RunConfig(workdir=str(tmp_path / "run"),
                       registry={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    registry = Registry(config.registry)
    for version, feature_version in ((1, "3"), (2, "3"), (3, "4")):
        model = tmp_path / f"student-{version}"
        model.mkdir()
        (model / "manifest.json").write_text(json.dumps({"kind": "student"}))
        registry.register(config.registry.student_name, model, {}, {"accuracy": 0.5},
                          {"feature_version": feature_version},
                          alias=CHAMPION if version == 1 else None)
    return config, registry


def _uri(registry, name, version) -> str:
    return model_repository_uri(next(v.source for v in registry.versions(name) if v.version == version))


def test_start_promote_rollback_patches_round_trip(registry_config, rendered):
    from relevance.registry import CHALLENGER, CHAMPION

    config, registry = registry_config
    registry.client.set_registered_model_alias(config.registry.student_name, CHALLENGER, "3")  # a nightly run
    name = config.registry.student_name
    prod = inference_service(rendered["prod"])
    others = [r for r in rendered["prod"] if r["kind"] != "InferenceService"]

    start = plan_start(config, registry, 2, 25)
    assert start.command[:4] == ["kubectl", "patch", "inferenceservice", "relevance-student"]
    assert "--namespace" in start.command and "relevance" in start.command
    canary = patch_local(prod, start.patch)
    predictor = canary["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 25
    assert predictor["model"]["storageUri"] == _uri(registry, name, 2)
    assert canary["metadata"] == prod["metadata"]  # no annotation churn: KServe copies them into pod templates
    assert predictor["model"]["runtime"] == "relevance-triton"  # a merge patch keeps what it does not name
    # file:// sources (the local registry) are not fetchable by KServe: the validator says so, nothing else.
    assert [e for e in validate([*others, canary]) if "storageUri" not in e] == []
    start.apply_registry()
    assert registry.alias_version(name, CANARY_ALIAS) == 2
    registry.client.set_registered_model_alias(name, CHALLENGER, "3")  # a pipeline run meanwhile: no effect

    # rollback during the canary: all traffic back on the champion's revision, champion's model in the spec
    abort = plan_rollback(config, registry)
    aborted = patch_local(canary, abort.patch)
    assert aborted["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert aborted["spec"]["predictor"]["model"]["storageUri"] == _uri(registry, name, 1)
    assert [e for e in validate([*others, aborted]) if "storageUri" not in e] == []

    promote = plan_promote(config, registry)
    promoted = patch_local(canary, promote.patch)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert promoted["spec"]["predictor"]["model"]["storageUri"] == _uri(registry, name, 2)
    assert [e for e in validate([*others, promoted]) if "storageUri" not in e] == []
    promote.apply_registry()
    assert registry.alias_version(name, CHAMPION) == 2 and registry.alias_version(name, CANARY_ALIAS) is None

    # rollback after the promotion: the previous champion's model back, at 100%
    undo = plan_rollback(config, registry)
    restored = patch_local(promoted, undo.patch)
    assert "canaryTrafficPercent" not in restored["spec"]["predictor"]
    assert restored["spec"]["predictor"]["model"]["storageUri"] == _uri(registry, name, 1)
    undo.apply_registry()
    assert registry.alias_version(name, CHAMPION) == 1


def test_start_refuses_what_cannot_work(registry_config):
    config, registry = registry_config
    with pytest.raises(CanaryError, match="computes feature version 4, the champion v1 3"):
        plan_start(config, registry, 3, 10)
    with pytest.raises(CanaryError, match="already the champion"):
        plan_start(config, registry, 1, 10)
    with pytest.raises(CanaryError, match="has no version 9"):
        plan_start(config, registry, 9, 10)
    with pytest.raises(CanaryError, match="expected an integer in 1..99"):
        plan_start(config, registry, 2, 100)
    with pytest.raises(CanaryError, match="start a canary first"):
        plan_promote(config, registry)


def test_dry_run_patches_the_rendered_overlay(registry_config):
    config, registry = registry_config
    patched, problems = dry_run(config, plan_start(config, registry, 2, 10))
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert patched["metadata"]["namespace"] == "relevance"
    assert len(problems) == 1 and "file://" in problems[0]  # the local registry's URIs, and nothing else


def test_cli_prints_the_command_and_changes_nothing_without_apply(registry_config, tmp_path):
    config, registry = registry_config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"registry": {"tracking_uri": config.registry.tracking_uri}}))
    out = _run("canary", "start", "--model-version", "2", "--percent", "10", "-c", str(path)).stdout
    assert out.startswith("kubectl patch inferenceservice relevance-student --namespace relevance --type merge -p ")
    assert '"canaryTrafficPercent": 10' in out and "registry (with --apply): relevance-student: canary → v2" in out
    assert registry.alias_version(config.registry.student_name, CANARY_ALIAS) is None

    dry = _run("canary", "start", "--model-version", "2", "--percent", "10", "-c", str(path), "--dry-run", check=False)
    assert dry.returncode == 1 and "canaryTrafficPercent: 10" in dry.stdout and "file://" in dry.stderr

    bad = _run("canary", "start", "--model-version", "2", "--percent", "150", "-c", str(path), check=False)
    assert bad.returncode == 2 and "less than or equal to 99" in bad.stderr
    # --apply with the local registry's file:// URIs: refused before kubectl runs; nothing changes.
    applied = _run("canary", "start", "--model-version", "2", "--percent", "10", "-c", str(path), "--apply",
                   check=False)
    assert applied.returncode == 2 and "nothing was changed" in applied.stderr
    assert registry.alias_version(config.registry.student_name, CANARY_ALIAS) is None


def test_apply_leaves_the_registry_alone_when_kubectl_fails(registry_config, tmp_path, monkeypatch):
    from serving.canary import apply

    config, registry = registry_config
    plan = plan_start(config, registry, 2, 10)
    plan.patch["spec"]["predictor"]["model"]["storageUri"] = "s3://models/student/2/onnx/model_repository"
    kubeconfig = tmp_path / "no-cluster"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(ValueError, match="kubectl patch inferenceservice relevance-student .* failed"):
        apply(config, plan)
    assert registry.alias_version(config.registry.student_name, CANARY_ALIAS) is None


# ------------------------------------------------------------------------------------------------------------
# Analysis on constructed cases
# ------------------------------------------------------------------------------------------------------------

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


def test_no_challenger_traffic_or_a_restart_is_not_evidence():
    silent = {**HEALTHY, "challenger": analysis.SloEvidence("challenger", 0, 0, None, None)}
    assert analysis.decide([_evidence(0.08, 0.05)], silent, CANARY).action == analysis.HOLD
    before = {"buckets": {0.01: 50.0, float("inf"): 60.0}, "outcomes": {"ok": 60.0}}
    after = {"buckets": {0.01: 5.0, float("inf"): 6.0}, "outcomes": {"ok": 6.0}}
    with pytest.raises(ValueError, match="counters went down"):
        analysis.slo_window("challenger", before, after)


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


# ------------------------------------------------------------------------------------------------------------
# The local canary, end to end
# ------------------------------------------------------------------------------------------------------------


def test_local_canary_with_two_students(tmp_path, tiny_bert):
    """Champion: a tiny run's student; challenger: a student distilled from the same labels with a different
    architecture and training. Both serve for real behind the splitter; the analysis decides."""
    settings = tiny_run_settings(tiny_bert, items=200, judged_queries=60, impressions=800)
    champion = {"profile": "quick", "workdir": str(tmp_path / "champion"), **settings,
                "serving": {"max_candidates": 50}, "eval": {"ks": [5, 10]},
                "canary": {"ndcg_k": 10, "judge_queries": 20, "judge_top_k": 5, "min_queries": 5,
                           "bootstrap_samples": 500, "max_p99_ms": 5000, "max_p99_ratio": 50}}
    champion_config = tmp_path / "champion.yaml"
    champion_config.write_text(yaml.safe_dump(champion))
    _run("run", "--config", str(champion_config))
    _run("features", "--config", str(champion_config))
    _run("export", "--config", str(champion_config))
    # Same data, teacher and labels; the students are trained anew.
    shutil.copytree(tmp_path / "champion", tmp_path / "challenger",
                    ignore=shutil.ignore_patterns("export", "student", "student_human_only"))
    challenger = copy.deepcopy(champion)
    challenger["workdir"] = str(tmp_path / "challenger")
    challenger["student"] = {**challenger["student"], "hidden": [8], "epochs": 1}
    challenger_config = tmp_path / "challenger.yaml"
    challenger_config.write_text(yaml.safe_dump(challenger))
    _run("train-student", "--config", str(challenger_config))
    _run("export", "--config", str(challenger_config))

    out = tmp_path / "canary"
    result = _run("canary", "local", "--config", str(champion_config), "--champion-bundle",
                  str(tmp_path / "champion/export"), "--challenger-bundle", str(tmp_path / "challenger/export"),
                  "--feature-repo", str(tmp_path / "champion/feature_repo"), "--percent", "30", "--requests", "60",
                  "--out", str(out))
    report = json.loads((out / "canary-analysis.json").read_text())
    assert report["decision"] in (analysis.PROMOTE, analysis.HOLD, analysis.ROLLBACK)
    assert f"decision: {report['decision'].upper()}" in result.stdout
    split = report["context"]["split_requests"]
    assert split["champion"] + split["challenger"] == 60 and 5 <= split["challenger"] <= 35
    quality = {q["name"]: q for q in report["quality"]}
    labelled, judged = quality["labelled"], quality["teacher judge"]
    assert labelled["queries"] >= 5 and judged["queries"] >= 5
    # Two different students: they disagree somewhere (ranking quality or predicted grades).
    accuracy = labelled["extra"]["accuracy"]
    assert (labelled["champion"], accuracy[0]) != (labelled["challenger"], accuracy[1])
    # Both servers answered the split traffic and the paired replays, without server errors.
    for server in ("champion", "challenger"):
        assert report["slo"][server]["requests"] >= split[server] + labelled["queries"]
        assert report["slo"][server]["errors"] == 0 and report["slo"][server]["p99_ms"] > 0
    # The decision is the rule applied to the evidence it reports.
    evidence = [analysis.QualityEvidence(**q) for q in report["quality"]]
    slo = {k: analysis.SloEvidence(**{f: v[f] for f in ("server", "requests", "errors", "p50_ms", "p99_ms")})
           for k, v in report["slo"].items()}
    config = RunConfig.model_validate(champion).canary
    assert analysis.decide(evidence, slo, config).action == report["decision"]
    assert (out / "canary-analysis.md").read_text().startswith("# Canary analysis")


def test_schedule_refuses_a_cron_kfp_would_misread():
    from pipelines.run import check_cron

    assert check_cron("0 0 3 * * *") == "0 0 3 * * *" and check_cron("@every 24h") == "@every 24h"
    with pytest.raises(ValueError, match="six fields, seconds first"):
        check_cron("0 3 * * *")  # five-field Unix cron: KFP would read the 0 as seconds
    result = _run("pipeline", "schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * *", check=False)
    assert result.returncode == 2 and "six fields" in result.stderr  # before any connection attempt
