"""The kustomize overlays render and validate offline (kubernetes-validate --strict for built-in kinds, the KServe
schema and canary checks for InferenceService and ServingRuntime), and broken manifests are refused."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from relevance.serving.canary.manifests import KUBERNETES_VERSION, SERVING_OVERLAYS, inference_service, validate


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
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
    isvc = {overlay: inference_service(rendered[overlay]) for overlay in SERVING_OVERLAYS}
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
