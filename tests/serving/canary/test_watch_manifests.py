"""The canary-watch overlay renders and validates offline (kubernetes-validate --strict, and the explicit
least-privilege and CronJob checks), runs `relevance canary watch` with options that exist and a config that
loads, and broken variants are refused."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from relevance.serving.canary.cli import canary_app
from relevance.serving.canary.manifests import (
    KUBERNETES_VERSION,
    MONITOR_OVERLAY,
    OVERLAYS,
    SERVING_OVERLAYS,
    SINK_OVERLAY,
    WATCH_OVERLAY,
    ManifestError,
    inference_service,
    kserve_dir,
    validate,
)
from relevance.serving.canary.watch import EXIT_ROLLED_BACK

from relevance.config import RunConfig

KINDS = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"}


def _by_kind(resources: list[dict]) -> dict[str, dict]:
    return {r["kind"]: r for r in resources}


def _pod(resources) -> dict:
    return _by_kind(resources)["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_watch_overlay_renders_and_is_valid(rendered, tmp_path):
    resources = rendered[WATCH_OVERLAY]
    assert sorted(r["kind"] for r in resources) == sorted(KINDS)  # no InferenceService: applying it resets no canary
    assert validate(resources) == []
    path = tmp_path / "watch.yaml"
    path.write_text(yaml.safe_dump_all(resources))
    result = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k",
                             KUBERNETES_VERSION, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in KINDS:
        assert f"passed for resource {kind.lower()}/relevance-canary-watch" in result.stdout + result.stderr


def test_the_role_is_least_privilege_on_the_served_model(rendered):
    watch, isvc = _by_kind(rendered[WATCH_OVERLAY]), inference_service(rendered["prod"])
    namespace = isvc["metadata"]["namespace"]
    assert {r["metadata"]["namespace"] for r in watch.values()} == {namespace}
    assert not any(r["kind"].startswith("Cluster") for r in rendered[WATCH_OVERLAY])
    (rule,) = watch["Role"]["rules"]
    assert rule == {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                    "resourceNames": [isvc["metadata"]["name"]], "verbs": ["get", "patch"]}
    binding = watch["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": watch["Role"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": watch["ServiceAccount"]["metadata"]["name"],
                                    "namespace": namespace}]
    pod = _pod(rendered[WATCH_OVERLAY])
    assert pod["serviceAccountName"] == watch["ServiceAccount"]["metadata"]["name"]
    # The token is mounted in the watch's pod only, where kubectl needs it.
    assert watch["ServiceAccount"]["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"]


def test_the_cronjob_runs_watch_safely(rendered):
    cronjob = _by_kind(rendered[WATCH_OVERLAY])["CronJob"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0 and job["template"]["spec"]["restartPolicy"] == "Never"
    fail_fast = job["podFailurePolicy"]["rules"][0]
    assert fail_fast["action"] == "FailJob" and EXIT_ROLLED_BACK in fail_fast["onExitCodes"]["values"]
    pod = _pod(rendered[WATCH_OVERLAY])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert container["image"] == inference_service(rendered["prod"])["spec"]["transformer"]["containers"][0]["image"]
    # MLflow from a Secret: the tracking URI by reference (the pod does not start without it), the rest by envFrom.
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"] == {"name": "relevance-mlflow",
                                                                      "key": "MLFLOW_TRACKING_URI"}
    assert container["envFrom"] == [{"secretRef": {"name": "relevance-mlflow"}}]
    assert not any("value" in e and ("MLFLOW" in e["name"] or "AWS" in e["name"]) for e in container["env"])


def test_the_cronjob_command_and_config_are_ones_watch_accepts(rendered):
    watch = _by_kind(rendered[WATCH_OVERLAY])
    (container,) = _pod(rendered[WATCH_OVERLAY])["containers"]
    assert container["command"] == ["relevance", "canary", "watch"]
    command = typer.main.get_command(canary_app).commands["watch"]
    known = {flag for param in command.params for flag in [*param.opts, *param.secondary_opts]}
    given = [arg for arg in container["args"] if arg.startswith("--")]
    assert given and set(given) <= known, set(given) - known
    # The mounted config is the generated ConfigMap (hashed name) and loads as the run config watch reads.
    volumes = {v["name"]: v for v in _pod(rendered[WATCH_OVERLAY])["volumes"]}
    assert volumes["config"]["configMap"]["name"] == watch["ConfigMap"]["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")["mountPath"]
    config_path = container["args"][container["args"].index("--config") + 1]
    assert Path(config_path).parent == Path(mount)
    config = RunConfig.model_validate(yaml.safe_load(watch["ConfigMap"]["data"][Path(config_path).name]))
    isvc = inference_service(rendered["prod"])
    assert config.serving.model_name == isvc["metadata"]["name"] == watch["Role"]["rules"][0]["resourceNames"][0]
    assert config.canary.namespace == isvc["metadata"]["namespace"]
    assert config.registry.tracking_uri is None  # from $MLFLOW_TRACKING_URI, i.e. the Secret
    assert config.canary.champion_predictor_url.format(name="n", namespace="ns").startswith("http://prev-n-")


def _set(path: str, value):
    def apply(resources):
        *parents, leaf = path.split(".")
        node = _by_kind(resources)[parents.pop(0)]
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        index = int(leaf) if leaf.isdigit() else leaf
        if value is KeyError:
            del node[index]
        else:
            node[index] = value
    return apply


POD = "CronJob.spec.jobTemplate.spec.template.spec"
BROKEN = [
    ("Role.rules.0.verbs", ["get", "patch", "delete"], "expected a subset of ['get', 'patch'], got also ['delete']"),
    ("Role.rules.0.verbs", ["*"], "rules.0.verbs: '*' grants more than the watch uses"),
    ("Role.rules.0.resources", ["inferenceservices", "secrets"], "got also ['secrets']"),
    ("Role.rules.0.apiGroups", ["*"], "rules.0.apiGroups: '*' grants more"),
    ("Role.rules.0", "resourceNames", "expected the InferenceService's name"),
    ("Role", "kind", "a ClusterRole grants cluster-wide access"),
    ("RoleBinding.subjects.0.namespace", "default", "expected the binding's own namespace 'relevance'"),
    ("CronJob.spec.concurrencyPolicy", "Allow", "expected 'Forbid'"),
    ("CronJob.spec.jobTemplate.spec", "podFailurePolicy", "expected backoffLimit 0 or a podFailurePolicy"),
    (f"{POD}.securityContext.runAsNonRoot", False, "runAsNonRoot: expected true"),
    (f"{POD}.containers.0.securityContext.readOnlyRootFilesystem", False, "readOnlyRootFilesystem: expected true"),
    (f"{POD}.containers.0.resources", {"requests": {"cpu": "1"}}, "resources.limits: expected cpu and memory"),
    (f"{POD}.containers.0.env.0", {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow"},
     "MLFLOW_TRACKING_URI: expected valueFrom.secretKeyRef"),
    (f"{POD}.containers.0.env.1", {"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"},
     "a credential as a literal value"),
    (f"{POD}.containers.0.command", ["relevance", "canary", "analyze"], "expected `relevance canary watch …`"),
    (f"{POD}.serviceAccountName", "default", "expected the job's own ServiceAccount"),
]


@pytest.mark.parametrize("path,value,message", BROKEN, ids=[b[2][:48] for b in BROKEN])
def test_broken_watch_manifests_are_refused(rendered, path, value, message):
    resources = copy.deepcopy(rendered[WATCH_OVERLAY])
    if value in ("resourceNames", "podFailurePolicy"):  # remove a key
        _set(f"{path}.{value}", KeyError)(resources)
    elif value == "kind":
        _by_kind(resources)["Role"]["kind"] = "ClusterRole"
        del _by_kind(resources)["ClusterRole"]["metadata"]["namespace"]
    else:
        _set(path, value)(resources)
    errors = validate(resources)
    assert any(message in e for e in errors), errors


def test_the_overlay_ships_and_dry_run_targets_only_serving_overlays(rendered, registry_config):
    from relevance.serving.canary.rollout import dry_run, plan_start

    shipped = kserve_dir() / "overlays"
    assert sorted(p.name for p in shipped.iterdir() if p.is_dir()) == sorted(OVERLAYS)
    # pyproject's package data is relevance.kserve = ["**/*.yaml"]: every file of the overlay must match it.
    for overlay in (WATCH_OVERLAY, SINK_OVERLAY, MONITOR_OVERLAY):
        assert all(p.suffix == ".yaml" for p in (shipped / overlay).rglob("*") if p.is_file())
    assert set(SERVING_OVERLAYS) | {WATCH_OVERLAY, SINK_OVERLAY, MONITOR_OVERLAY} == set(OVERLAYS)
    config, registry = registry_config
    plan = plan_start(config, registry, 2, 10)
    config.canary.overlay = WATCH_OVERLAY
    with pytest.raises(ManifestError, match="found 0 .*canary.overlay must render the InferenceService"):
        dry_run(config, plan)
    config.canary.overlay = "prod"  # unchanged for the serving overlays
    patched, problems = dry_run(config, plan)
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 10 and len(problems) == 1
