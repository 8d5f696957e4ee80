"""The deployment manifests (infra/kserve), checked offline, and the kubectl patches that run a canary.

No API server can run here, so every check is one a cluster would make before admitting the objects:

- built-in kinds (ServiceAccount, ConfigMap; the canary watch's CronJob, Role and RoleBinding) against
  Kubernetes' own strict schemas (kubernetes-validate);
- InferenceService and ServingRuntime against a structural schema of the KServe types, with unknown fields
  refused as ``kubectl apply --validate=strict`` would. The real CRD file can be passed instead
  (``crd_file``); without one, the schema is built from the pinned KServe SDK's generated models (generated from
  the same Go types as the CRD's openAPIV3Schema) with Kubernetes' strict definitions for the embedded pod
  and container types;
- what no schema says, checked explicitly: canaryTrafficPercent is an integer in 0..100 and is only set in
  Serverless mode (RawDeployment silently ignores it), the predictor's runtime exists and supports its model
  format and protocol, and the model's storage URI is one KServe's storage initializer can fetch; the watch's
  Role is least privilege (namespaced, no wildcards, get and patch on named InferenceServices only) and its
  CronJob runs one round at a time, non-root, read-only, bounded, with MLflow credentials from a Secret.

Rendering is ``kubectl kustomize``; a patch's result is ``kubectl patch --local`` (JSON merge patch), so what is
checked is what kubectl would send.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

# The Kubernetes API the manifests target: built-in kinds, and the pod and container types inside the KServe
# kinds, are checked against its strict schemas (KServe 0.21 embeds pod fields as new as 1.36, e.g. schedulingGroup).
KUBERNETES_VERSION = "1.36.0"
KSERVE_API = "serving.kserve.io"
ISVC_KIND, RUNTIME_KIND = "InferenceService", "ServingRuntime"
# Schemes KServe's storage initializer fetches (kserve/storage); anything else fails at pod start.
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "hdfs://", "webhdfs://", "hf://", "oci://", "https://", "http://")
KNATIVE_MODES = ("Serverless", "Knative")  # the same mode before and after KServe 0.17
# Shipped with the package (infra/kserve in a checkout). The serving overlays hold the InferenceService, which
# `--dry-run` patches; canary-watch holds only the watch's CronJob and its RBAC, so that applying it never resets
# a running canary's spec.
SERVING_OVERLAYS = ("dev", "prod", "canary")
WATCH_OVERLAY = "canary-watch"
SINK_OVERLAY = "traffic-sink"  # the payload logger's sink (relevance.serving.traffic_sink); no InferenceService
MONITOR_OVERLAY = "monitor"  # `relevance monitor` as a CronJob (relevance.serving.monitor); no InferenceService
OVERLAYS = (*SERVING_OVERLAYS, WATCH_OVERLAY, SINK_OVERLAY, MONITOR_OVERLAY)
# What the watch's Role may do, and on what (kubectl get: is a canary in the spec, which revisions; kubectl patch:
# promote / rollback, which GETs the object first). It never lists, watches, creates or deletes anything.
WATCH_RULE = {"apiGroups": [KSERVE_API], "resources": ["inferenceservices"], "verbs": ["get", "patch"]}


class ManifestError(ValueError):
    """A manifest that would not be admitted (or not behave) as intended, or a kubectl call that failed."""


def kserve_dir() -> Path:
    """The kustomize base and overlays shipped with the package."""
    from relevance.common.resources import packaged

    return packaged("kserve")


def overlay_dir(overlay: str | Path) -> Path:
    """A kustomize directory: a shipped overlay by name (dev, prod, canary, canary-watch, traffic-sink), or any
    directory path."""
    if str(overlay) in OVERLAYS:
        return kserve_dir() / "overlays" / str(overlay)
    path = Path(overlay)
    if not (path / "kustomization.yaml").exists():
        raise ManifestError(f"canary.overlay {str(overlay)!r}: expected one of the shipped overlays {list(OVERLAYS)} "
                            "or a directory with a kustomization.yaml")
    return path


# ------------------------------------------------------------------------------------------------------------
# kubectl
# ------------------------------------------------------------------------------------------------------------


def kubectl_binary(name: str = "kubectl") -> str:
    found = shutil.which(name)
    if found is None:
        raise ManifestError(f"{name!r} is not on PATH: rendering and --dry-run need kubectl (any recent client; "
                            "`kubectl kustomize` and `kubectl patch --local` run without a cluster)")
    return found


def kubectl(args: list[str], stdin: str | None = None, binary: str = "kubectl") -> str:
    result = subprocess.run([kubectl_binary(binary), *args], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise ManifestError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def render(overlay: str | Path, binary: str = "kubectl") -> list[dict]:
    """The objects an overlay renders to (``kubectl kustomize``)."""
    return [doc for doc in yaml.safe_load_all(kubectl(["kustomize", str(overlay)], binary=binary)) if doc]


def patch_local(resource: dict, patch: dict, binary: str = "kubectl") -> dict:
    """``resource`` with ``patch`` applied as a JSON merge patch by ``kubectl patch --local``."""
    out = kubectl(["patch", "--local", "-f", "-", "--type", "merge", "-p", json.dumps(patch, sort_keys=True),
                   "-o", "json"], stdin=yaml.safe_dump(resource), binary=binary)
    return json.loads(out)


# ------------------------------------------------------------------------------------------------------------
# Schemas
# ------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def kubernetes_definitions(version: str = KUBERNETES_VERSION) -> dict:
    """Kubernetes' strict JSON-schema definitions ($defs), as kubernetes-validate ships them."""
    import kubernetes_validate.utils as kv

    major_minor = kv.major_minor(version)
    chosen = [v for v in kv.all_versions() if kv.major_minor(v) <= major_minor][-1]
    return kv.schema_contents(f"kubernetes-json-schema/v{chosen}-local-strict/_definitions.json", version)["$defs"]


_PRIMITIVES = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"},
               "float": {"type": "number"}, "object": {}, "datetime": {"type": "string"}}
_KUBERNETES_GROUPS = ("core", "apps", "autoscaling", "policy", "batch", "networking", "resource", "storage")


def _kubernetes_ref(type_name: str, definitions: dict) -> str:
    """The $defs key of a kubernetes-client model name: V1Container → io.k8s.api.core.v1.Container."""
    if type_name == "ResourceQuantity":
        return "io.k8s.apimachinery.pkg.api.resource.Quantity"
    qualified = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w+)", type_name)
    if qualified:
        group, version, kind = qualified.groups()
        key = f"io.k8s.api.{group.lower()}.{version.lower()}.{kind}"
        if key in definitions:
            return key
    plain = re.fullmatch(r"(V\d(?:alpha\d|beta\d)?)([A-Z]\w+)", type_name)
    if plain:
        version, kind = plain.groups()
        candidates = [f"io.k8s.api.{group}.{version.lower()}.{kind}" for group in _KUBERNETES_GROUPS]
        candidates.append(f"io.k8s.apimachinery.pkg.apis.meta.{version.lower()}.{kind}")
        for key in candidates:
            if key in definitions:
                return key
    raise ManifestError(f"no Kubernetes schema for the KServe SDK type {type_name!r}")


def _required(model) -> list[str]:
    """Fields the SDK's generated setters refuse to leave unset (its rendering of the OpenAPI `required`)."""
    required = []
    for attribute, json_name in model.attribute_map.items():
        prop = getattr(model, attribute, None)
        if isinstance(prop, property) and prop.fset is not None and \
                "must not be `None`" in inspect.getsource(prop.fset):
            required.append(json_name)
    return required


def _sdk_schema(type_name: str, defs: dict, kubernetes: dict) -> dict:
    import kserve.models

    if type_name in _PRIMITIVES:
        return dict(_PRIMITIVES[type_name])
    if (inner := re.fullmatch(r"list\[(.+)\]", type_name)):
        return {"type": "array", "items": _sdk_schema(inner.group(1), defs, kubernetes)}
    if (inner := re.fullmatch(r"dict\(str, (.+)\)", type_name)):
        return {"type": "object", "additionalProperties": _sdk_schema(inner.group(1), defs, kubernetes)}
    model = getattr(kserve.models, type_name, None)
    if model is None and re.match(r"V\d+(alpha|beta)\d|Knative", type_name):
        # A KServe type the SDK does not generate (multi-node workerSpec, metric quantities, status types):
        # accepted as any object; the manifests here use none of them.
        return {"type": "object"}
    if model is None or not hasattr(model, "openapi_types"):
        key = _kubernetes_ref(type_name, kubernetes)
        defs[key] = kubernetes[key]
        return {"$ref": f"#/$defs/{key}"}
    if type_name not in defs:
        defs[type_name] = {}  # placeholder: the KServe types refer to themselves (e.g. InferenceGraph routers)
        defs[type_name] = {
            "type": "object", "additionalProperties": False, "required": _required(model),
            "properties": {model.attribute_map[attribute]: _sdk_schema(inner, defs, kubernetes)
                           for attribute, inner in model.openapi_types.items()}}
    return {"$ref": f"#/$defs/{type_name}"}


@functools.lru_cache(maxsize=None)
def kserve_schema(kind: str, crd_file: str | None = None) -> dict:
    """JSON schema of a KServe kind: from the CRD file when it defines the kind, else built from the KServe SDK
    models."""
    if crd_file:
        for document in yaml.safe_load_all(Path(crd_file).read_text()):
            if document and document.get("spec", {}).get("names", {}).get("kind") == kind:
                for version in document["spec"]["versions"]:
                    if version["name"] in ("v1beta1", "v1alpha1"):
                        return version["schema"]["openAPIV3Schema"]
                raise ManifestError(f"{crd_file}: the {kind} CRD has no v1beta1/v1alpha1 schema")
    kubernetes = kubernetes_definitions()
    defs: dict = {}
    sdk_type = {ISVC_KIND: "V1beta1InferenceService", RUNTIME_KIND: "V1alpha1ServingRuntime"}[kind]
    root = _sdk_schema(sdk_type, defs, kubernetes)
    # The closure of the Kubernetes definitions the referenced ones use.
    pending = [k for k in defs if k.startswith("io.k8s.")]
    while pending:
        for ref in re.findall(r'"#/\$defs/([^"]+)"', json.dumps(kubernetes[pending.pop()])):
            if ref not in defs:
                defs[ref] = kubernetes[ref]
                pending.append(ref)
    top = defs[sdk_type]
    top["properties"]["metadata"] = {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    defs.setdefault("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                    kubernetes["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"])
    top["required"] = sorted(set(top["required"]) | {"apiVersion", "kind", "metadata", "spec"})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs, **root}


def _schema_errors(resource: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
            for error in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path)))]


# ------------------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------------------


def _name(resource: dict) -> str:
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


def check_inference_service(isvc: dict, runtimes: list[dict]) -> list[str]:
    """What the CRD schema does not say but KServe (or the canary) relies on."""
    errors = []
    annotations = isvc.get("metadata", {}).get("annotations") or {}
    # KServe 0.17 renamed Serverless to Knative and made Standard (raw) the default: say it explicitly.
    mode = annotations.get("serving.kserve.io/deploymentMode")
    if mode not in KNATIVE_MODES:
        errors.append(f"metadata.annotations.serving.kserve.io/deploymentMode: expected one of {KNATIVE_MODES} "
                      f"(canary traffic splitting needs Knative revisions), got {mode!r}")
    spec = isvc.get("spec") or {}
    for component in ("predictor", "transformer"):
        percent = (spec.get(component) or {}).get("canaryTrafficPercent")
        if percent is None:
            continue
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            errors.append(f"spec.{component}.canaryTrafficPercent: expected an integer in 0..100, got {percent!r}")
        if mode not in KNATIVE_MODES:
            errors.append(f"spec.{component}.canaryTrafficPercent is set but deploymentMode is {mode}: KServe "
                          "ignores canaryTrafficPercent outside Serverless (Knative) mode")
    model = (spec.get("predictor") or {}).get("model")
    if not model:
        return errors + ["spec.predictor.model: expected the Triton model (modelFormat, runtime, storageUri)"]
    format_name = (model.get("modelFormat") or {}).get("name")
    if format_name != "onnx":
        errors.append(f"spec.predictor.model.modelFormat.name: expected 'onnx' (the student's Triton repository), "
                      f"got {format_name!r}")
    if model.get("protocolVersion") != "v2":
        errors.append(f"spec.predictor.model.protocolVersion: expected 'v2' (the transformer calls the predictor "
                      f"over the V2 protocol), got {model.get('protocolVersion')!r}")
    uri = model.get("storageUri", "")
    if not uri.startswith(STORAGE_SCHEMES):
        errors.append(f"spec.predictor.model.storageUri: {uri!r} is not a URI KServe's storage initializer can "
                      f"fetch (one of {', '.join(STORAGE_SCHEMES)})")
    by_name = {r["metadata"]["name"]: r for r in runtimes}
    runtime = by_name.get(model.get("runtime"))
    if runtime is None:
        errors.append(f"spec.predictor.model.runtime: {model.get('runtime')!r} is not a ServingRuntime in these "
                      f"manifests (have {sorted(by_name)})")
    else:
        formats = {f["name"] for f in runtime["spec"].get("supportedModelFormats", [])}
        protocols = set(runtime["spec"].get("protocolVersions", []))
        if format_name not in formats:
            errors.append(f"ServingRuntime/{runtime['metadata']['name']} does not support model format "
                          f"{format_name!r} (supports {sorted(formats)})")
        if model.get("protocolVersion") not in protocols:
            errors.append(f"ServingRuntime/{runtime['metadata']['name']} does not speak protocol "
                          f"{model.get('protocolVersion')!r} (speaks {sorted(protocols)})")
    return errors


def check_rbac(resource: dict) -> list[str]:
    """Least privilege for every Role in these manifests: namespaced, no wildcards, and nothing beyond
    :data:`WATCH_RULE` (get and patch on InferenceServices, each rule naming the ones it may touch)."""
    kind = resource.get("kind")
    if kind in ("ClusterRole", "ClusterRoleBinding"):
        return [f"expected a namespaced Role / RoleBinding: a {kind} grants cluster-wide access, and the canary "
                "watch needs one InferenceService in one namespace"]
    errors = [] if resource.get("metadata", {}).get("namespace") else \
        ["metadata.namespace: expected the namespace the InferenceService runs in, got none"]
    if kind == "RoleBinding":
        if (resource.get("roleRef") or {}).get("kind") != "Role":
            errors.append(f"roleRef.kind: expected 'Role', got {(resource.get('roleRef') or {}).get('kind')!r}")
        for index, subject in enumerate(resource.get("subjects") or []):
            if subject.get("kind") != "ServiceAccount":
                errors.append(f"subjects.{index}.kind: expected 'ServiceAccount', got {subject.get('kind')!r}")
            elif subject.get("namespace") != resource.get("metadata", {}).get("namespace"):
                errors.append(f"subjects.{index}.namespace: expected the binding's own namespace "
                              f"{resource.get('metadata', {}).get('namespace')!r}, got {subject.get('namespace')!r}")
        return errors
    for index, rule in enumerate(resource.get("rules") or []):
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            if "*" in (rule.get(key) or []):
                errors.append(f"rules.{index}.{key}: '*' grants more than the watch uses")
        if rule.get("nonResourceURLs"):
            errors.append(f"rules.{index}.nonResourceURLs: expected none, got {rule['nonResourceURLs']}")
        for key in ("apiGroups", "resources"):
            extra = sorted(set(rule.get(key) or []) - set(WATCH_RULE[key]))
            if extra:
                errors.append(f"rules.{index}.{key}: expected only {WATCH_RULE[key]}, got also {extra}")
        extra = sorted(set(rule.get("verbs") or []) - set(WATCH_RULE["verbs"]))
        if extra:
            errors.append(f"rules.{index}.verbs: expected a subset of {WATCH_RULE['verbs']}, got also {extra}")
        if not rule.get("resourceNames"):
            errors.append(f"rules.{index}.resourceNames: expected the InferenceService's name, so that the role "
                          "reaches no other model in the namespace")
    return errors


def cron_jobs() -> dict[str, tuple[list[str], tuple[int, ...]]]:
    """The shipped CronJobs by name: the command each runs, and the exit codes a retry would hide (the watch's
    rollback, the monitor's drift and judged-quality alerts)."""
    from relevance.serving.canary.watch import EXIT_ROLLED_BACK
    from relevance.serving.monitor import EXIT_DRIFT, EXIT_QUALITY

    return {"relevance-canary-watch": (["relevance", "canary", "watch"], (EXIT_ROLLED_BACK,)),
            "relevance-monitor": (["relevance", "monitor"], (EXIT_DRIFT, EXIT_QUALITY))}


def check_watch_job(cronjob: dict) -> list[str]:
    """What a shipped CronJob (the canary watch, the traffic monitor) must be and the schema does not say: one
    round at a time, no retry of a round that decided (exit code 2, and cron_jobs()' codes: rolled back, drift,
    judged quality), a non-root read-only container with resource bounds, and MLflow credentials from a Secret,
    never a literal value."""
    name = (cronjob.get("metadata") or {}).get("name", "")
    jobs = cron_jobs()
    if name not in jobs:
        return [f"metadata.name: expected one of the shipped CronJobs {sorted(jobs)}, got {name!r}"]
    command, decided = jobs[name]
    errors = []
    spec = cronjob.get("spec") or {}
    if spec.get("concurrencyPolicy") != "Forbid":
        errors.append(f"spec.concurrencyPolicy: expected 'Forbid' (two rounds acting on one canary at once could "
                      f"both patch it), got {spec.get('concurrencyPolicy')!r}")
    job = (spec.get("jobTemplate") or {}).get("spec") or {}
    if not job.get("activeDeadlineSeconds"):
        errors.append("spec.jobTemplate.spec.activeDeadlineSeconds: expected a deadline: with Forbid, a hung round "
                      "would block every later one")
    stopped = {code for rule in (job.get("podFailurePolicy") or {}).get("rules", []) if rule.get("action") == "FailJob"
               and (rule.get("onExitCodes") or {}).get("operator") == "In"
               for code in (rule.get("onExitCodes") or {}).get("values", [])}
    if job.get("backoffLimit") != 0 and not set(decided) <= stopped:
        errors.append(f"spec.jobTemplate.spec: expected backoffLimit 0 or a podFailurePolicy rule FailJob on exit "
                      f"code(s) {sorted(set(decided) - stopped)}: a retried round after a decision (a rollback, an "
                      "alert) may succeed and hide it")
    pod = (job.get("template") or {}).get("spec") or {}
    if not pod.get("serviceAccountName") or pod.get("serviceAccountName") == "default":
        errors.append(f"spec.jobTemplate.spec.template.spec.serviceAccountName: expected the job's own "
                      f"ServiceAccount, got {pod.get('serviceAccountName')!r}")
    if (pod.get("securityContext") or {}).get("runAsNonRoot") is not True:
        errors.append("spec.jobTemplate.spec.template.spec.securityContext.runAsNonRoot: expected true")
    for index, container in enumerate(pod.get("containers") or []):
        where = f"spec.jobTemplate.spec.template.spec.containers.{index}"
        given = [*container.get("command", []), *container.get("args", [])][:len(command)]
        if given != command:
            errors.append(f"{where}.command: expected `{' '.join(command)} …`, got {given}")
        context = container.get("securityContext") or {}
        for key, expected in (("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)):
            if context.get(key) is not expected:
                errors.append(f"{where}.securityContext.{key}: expected {str(expected).lower()}, "
                              f"got {context.get(key)!r}")
        resources = container.get("resources") or {}
        for bound in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (resources.get(bound) or {})]
            if missing:
                errors.append(f"{where}.resources.{bound}: expected cpu and memory, missing {missing}")
        env = {e["name"]: e for e in container.get("env") or []}
        tracking = env.get("MLFLOW_TRACKING_URI") or {}
        if "secretKeyRef" not in (tracking.get("valueFrom") or {}):
            errors.append(f"{where}.env.MLFLOW_TRACKING_URI: expected valueFrom.secretKeyRef (the MLflow Secret), "
                          f"got {tracking or 'nothing'}")
        for name, variable in env.items():
            if "value" in variable and re.search(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY", name):
                errors.append(f"{where}.env.{name}: a credential as a literal value; expected valueFrom.secretKeyRef")
    return errors


def validate(resources: list[dict], crd_file: str | None = None) -> list[str]:
    """Every problem with a set of rendered objects, as '<Kind>/<name>: <path>: <what>' lines (empty: valid)."""
    import kubernetes_validate

    errors = []
    runtimes = [r for r in resources if r.get("kind") == RUNTIME_KIND]
    for resource in resources:
        api_version = resource.get("apiVersion", "")
        if api_version.startswith(KSERVE_API + "/"):
            kind = resource.get("kind")
            if kind not in (ISVC_KIND, RUNTIME_KIND):
                errors.append(f"{_name(resource)}: no schema for KServe kind {kind!r}")
                continue
            found = _schema_errors(resource, kserve_schema(kind, crd_file))
            if kind == ISVC_KIND:
                found += check_inference_service(resource, runtimes)
        else:
            try:
                kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
                found = []
            except kubernetes_validate.ValidationError as error:
                found = [f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: "
                         f"{error.message}"]
            except kubernetes_validate.SchemaNotFoundError as error:
                found = [str(error)]
            if resource.get("kind") in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
                found += check_rbac(resource)
            elif resource.get("kind") == "CronJob":
                found += check_watch_job(resource)
        errors += [f"{_name(resource)}: {line}" for line in found]
    return errors


def inference_service(resources: list[dict]) -> dict:
    found = [r for r in resources if r.get("kind") == ISVC_KIND]
    if len(found) != 1:
        raise ManifestError(f"expected exactly one InferenceService in the manifests, found {len(found)} (canary."
                            f"overlay must render the InferenceService: one of {list(SERVING_OVERLAYS)} or your own "
                            f"directory; {WATCH_OVERLAY!r} holds only the watch's CronJob)")
    return found[0]
