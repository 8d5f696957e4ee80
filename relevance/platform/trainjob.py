"""The teacher step's launcher, and the multi-node path: a Kubeflow Trainer v2 ``TrainJob``.

:func:`launch_teacher_training` is what the KFP teacher step calls (`relevance train-teacher` goes through
relevance.chain.Chain.teacher, with :func:`train_as_trainjob`): in this process, torchrun on this machine
(relevance.teacher.launch.launch_local), or, with ``teacher.distributed.launcher: trainjob``, a ``TrainJob`` (API
group trainer.kubeflow.org, v1alpha1; https://www.kubeflow.org/docs/components/trainer/) of ``num_nodes`` nodes ×
``nproc_per_node`` processes on a ClusterTrainingRuntime such as ``torch-distributed``, submitted with the
Kubernetes Python client and waited for until its ``Complete`` or ``Failed`` condition.

The manifest is rendered from infra/trainer/trainjob.yaml and checked offline before it goes anywhere:
- against the TrainJob CRD's ``openAPIV3Schema`` (infra/trainer/trainjob.schema.json: the spec's schema from
  kubeflow/trainer's manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml, descriptions dropped; its source
  commit is recorded in the file), strictly: a field the schema does not name is an error, as with
  ``kubectl apply --validate=strict``;
- the CRD's CEL rules (``x-kubernetes-validations``) that hold on create, translated (:func:`cel_check`);
  transition rules (``self == oldSelf``) only concern updates;
- the Trainer webhook's rule that ``spec.trainer.env`` must not set the PET_* variables the torch runtime injects
  (pkg/runtime/framework/plugins/torch/torch.go), and list-map keys being unique.

The kubernetes client (a dependency of kfp and kserve) and jsonschema are imported only where they are used.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

import yaml

from relevance.common.resources import packaged
from relevance.config import K8S_NAME, RunConfig

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
# Set by the torch runtime on every node (PET_* are torchrun's environment defaults); the webhook refuses them.
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
# ObjectMeta as far as a TrainJob manifest uses it: the CRD leaves metadata to the API server's own schema.
_OBJECT_META = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string", "maxLength": 63, "pattern": K8S_NAME},
        "labels": {"type": "object", "additionalProperties": {
            "type": "string", "maxLength": 63, "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class TrainJobManifestError(ValueError):
    """A TrainJob manifest the API server would refuse. ``problems`` lists every one, each with its field path."""

    def __init__(self, problems: list[str], source: str):
        super().__init__(f"TrainJob manifest does not validate against the {GROUP}/{VERSION} CRD ({source}): "
                         + "; ".join(problems))
        self.problems = problems


class TrainJobError(RuntimeError):
    """A submitted TrainJob failed, or did not finish in time."""


# -- the schema -------------------------------------------------------------------------------------------------

def schema_from_crd(crd_text: str, source: dict) -> dict:
    """What infra/trainer/trainjob.schema.json holds, from the CRD file: the v1alpha1 ``openAPIV3Schema`` without
    descriptions (validation does not read them) and without ``status`` (a manifest has none), and where it came
    from. To update it: fetch kubeflow/trainer, then
    ``schema_from_crd(Path("manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml").read_text(),
    {"repository": "kubeflow/trainer", "commit": "<sha>", "path": "manifests/base/crds/…"})``, written with
    ``json.dumps(…, indent=1, sort_keys=True)``; then run tests/models/test_distributed.py, which fails on a CEL rule
    :func:`cel_check` does not know yet."""
    crd = yaml.safe_load(crd_text)
    if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["names"]["kind"] != KIND:
        raise ValueError(f"expected the {KIND} CustomResourceDefinition, got kind {crd.get('kind')!r}")
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if VERSION not in versions:
        raise ValueError(f"the CRD has no version {VERSION}; it has {sorted(versions)}")

    def without_descriptions(node):
        if isinstance(node, dict):
            return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
        if isinstance(node, list):
            return [without_descriptions(v) for v in node]
        return node

    schema = without_descriptions(versions[VERSION]["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    return {"source": source, "openAPIV3Schema": schema}


def stored_schema() -> dict:
    """infra/trainer/trainjob.schema.json (shipped as relevance/trainer/trainjob.schema.json)."""
    return json.loads((packaged("trainer") / "trainjob.schema.json").read_text())


def json_schema(openapi: dict) -> dict:
    """A JSON Schema (draft 7) from a structural openAPIV3Schema, strict: every object that lists its properties
    refuses others (the API server prunes or, with strict field validation, refuses unknown fields), int32/int64
    carry their ranges, and apiVersion/kind/metadata are pinned to a TrainJob's."""

    def convert(node):
        if isinstance(node, list):
            return [convert(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: convert(v) for k, v in node.items() if not k.startswith("x-kubernetes-")
               and k not in ("properties", "additionalProperties")}
        if "properties" in node:
            out["properties"] = {name: convert(child) for name, child in node["properties"].items()}
        if isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = convert(node["additionalProperties"])
        elif "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        bits = {"int32": 31, "int64": 63}.get(node.get("format"))
        if bits and node.get("type") == "integer":
            out.setdefault("minimum", -(2 ** bits))
            out.setdefault("maximum", 2 ** bits - 1)
        return out

    schema = convert(openapi)
    schema["properties"]["apiVersion"] = {"const": f"{GROUP}/{VERSION}"}
    schema["properties"]["kind"] = {"const": KIND}
    schema["properties"]["metadata"] = _OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return schema


# The CEL rules of the TrainJob CRD, as Python checks. Each pattern: (regex on the rule, check(value, match)).
_CEL = [
    (r"^self\.metadata\.name\.matches\('(?P<re>.+)'\)$",
     lambda value, m: re.search(m["re"], str(value.get("metadata", {}).get("name", ""))) is not None),
    (r"^size\(self\.metadata\.name\) <= (?P<n>\d+)$",
     lambda value, m: len(str(value.get("metadata", {}).get("name", ""))) <= int(m["n"])),
    (r"^self == '' \|\| self\.matches\('(?P<re>.+)'\)$",
     lambda value, m: value == "" or re.search(m["re"], str(value)) is not None),
    (r"^self in \[(?P<items>.*)\]$",
     lambda value, m: value in re.findall(r"'([^']*)'", m["items"])),
    (r"^self >= (?P<n>-?\d+)$", lambda value, m: isinstance(value, (int, float)) and value >= int(m["n"])),
    (r"^has\(self\.(?P<field>\w+)\)$", lambda value, m: m["field"] in value),
]


def cel_check(rule: str) -> Callable[[object], bool] | None:
    """A check for a CEL rule of the CRD that holds on create; ``lambda _: True`` for a transition rule (it
    compares with ``oldSelf``: an update's concern); None for a rule not understood yet."""
    if "oldSelf" in rule:
        return lambda _: True
    for pattern, check in _CEL:
        match = re.match(pattern, rule)
        if match:
            return lambda value, check=check, match=match: check(value, match)
    return None


def unchecked_rules(openapi: dict) -> list[str]:
    """The CEL rules in ``openapi`` that :func:`cel_check` cannot check (a schema update brought new ones)."""
    rules: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            rules.extend(r["rule"] for r in node.get("x-kubernetes-validations", []) if cel_check(r["rule"]) is None)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(openapi)
    return rules


def validate_trainjob(manifest: dict, schema: dict | None = None) -> dict:
    """``manifest`` if it is a TrainJob the API server and Trainer's webhook would admit (as far as can be known
    offline); otherwise :class:`TrainJobManifestError` listing every problem with its path."""
    import jsonschema

    stored = schema or stored_schema()
    openapi = stored["openAPIV3Schema"]
    source = stored.get("source", {})
    source_name = f"{source.get('repository', '?')}@{str(source.get('commit', '?'))[:12]}"
    problems = []
    validator = jsonschema.Draft7Validator(json_schema(openapi))
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(_describe(error))
    if not problems:  # the CEL rules and the webhook's assume a structurally valid object
        problems += _cel_problems(openapi, manifest, "")
        env = (manifest.get("spec", {}).get("trainer") or {}).get("env", [])
        reserved = sorted({e["name"] for e in env} & set(RESERVED_ENV))
        if reserved:
            problems.append(f"spec.trainer.env: must not set {reserved}: the torch runtime sets them on every node")
    if problems:
        raise TrainJobManifestError(problems, source_name)
    return manifest


def _describe(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(root)"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        unknown = [k for k in error.instance if k not in known]
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return f"{path}: unknown field(s) {', '.join(hints)}; expected some of {known}"
    if error.validator == "required":
        return f"{path}: {error.message}"
    return f"{path}: {error.message} (expected {error.validator} {error.validator_value!r})" \
        if error.validator in ("minimum", "maximum", "pattern", "maxLength", "minLength", "enum", "const") \
        else f"{path}: {error.message}"


def _cel_problems(node: dict, value, path: str) -> list[str]:
    problems = []
    for rule in node.get("x-kubernetes-validations", []):
        check = cel_check(rule["rule"])
        if check is not None and not check(value):
            problems.append(f"{path or '(root)'}: {rule.get('message') or rule['rule']} (CEL: {rule['rule']})")
    if isinstance(value, dict):
        for key, child in (node.get("properties") or {}).items():
            if key in value:
                problems += _cel_problems(child, value[key], f"{path}.{key}" if path else key)
        if isinstance(node.get("additionalProperties"), dict):
            for key, child in value.items():
                problems += _cel_problems(node["additionalProperties"], child, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        keys = node.get("x-kubernetes-list-map-keys")
        if node.get("x-kubernetes-list-type") == "map" and keys:
            seen = [tuple(item.get(k) for k in keys) for item in value]
            duplicates = sorted({k for k in seen if seen.count(k) > 1}, key=str)
            if duplicates:
                problems.append(f"{path}: entries must be unique by {keys}, got duplicates {duplicates}")
        for i, item in enumerate(value):
            problems += _cel_problems(node["items"], item, f"{path}.{i}")
    return problems


# -- rendering --------------------------------------------------------------------------------------------------

def render_trainjob(config: RunConfig, dataset_dir: str | Path, out_dir: str | Path, name: str | None = None) -> dict:
    """The TrainJob manifest for fine-tuning ``config``'s teacher on the prepared dataset in ``dataset_dir`` into
    ``out_dir``, both on the shared volume (``teacher.distributed.trainjob.shared_mount_path``), where every node
    mounts it at the same path. Rendered only: see :func:`validate_trainjob`."""
    from relevance.teacher.launch import worker_arguments
    from relevance.teacher.train import check_distributed_settings

    settings = config.teacher.distributed
    job = settings.trainjob
    check_distributed_settings(config.teacher, settings.num_nodes * settings.nproc_per_node)
    mount = Path(job.shared_mount_path)
    for what, path in (("dataset directory", dataset_dir), ("teacher output directory", out_dir)):
        if not Path(path).is_absolute() or not on_volume(path, mount):
            raise ValueError(f"TrainJob: the {what} must be an absolute path on the shared volume mounted at {mount} "
                             f"(teacher.distributed.trainjob.shared_mount_path), which every node sees; got {path}")
    manifest = yaml.safe_load((packaged("trainer") / "trainjob.yaml").read_text())
    manifest["metadata"]["name"] = name or f"{job.name_prefix}-{uuid.uuid4().hex[:12]}"
    manifest["metadata"]["namespace"] = job.namespace
    spec = manifest["spec"]
    spec["runtimeRef"].update(kind=job.runtime_kind, name=job.runtime)
    trainer = spec["trainer"]
    trainer.update(image=job.image, numNodes=settings.num_nodes, numProcPerNode=settings.nproc_per_node)
    # The resolved config travels inside the manifest: what a node trains is exactly what was rendered.
    run_config = config.model_dump_json(exclude_defaults=True)
    trainer["args"] = ["-m", "relevance.teacher", *worker_arguments(run_config, dataset_dir, out_dir)]
    env = {e["name"]: e for e in trainer["env"]}  # the config's variables replace the template's of that name
    env.update({name: {"name": name, "value": value} for name, value in job.env.items()})
    trainer["env"] = list(env.values())
    gpus = settings.nproc_per_node if job.gpus_per_node is None else job.gpus_per_node
    limits = {**({job.gpu_resource: gpus} if gpus else {}),
              **({"cpu": job.cpu_per_node} if job.cpu_per_node else {}),
              **({"memory": job.memory_per_node} if job.memory_per_node else {})}
    if limits:
        trainer["resourcesPerNode"] = {"limits": limits}
    else:  # CPU nodes sized by the runtime's defaults
        del trainer["resourcesPerNode"]
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]
    pod["volumes"][0]["persistentVolumeClaim"]["claimName"] = job.shared_volume_claim
    pod["containers"][0]["volumeMounts"][0]["mountPath"] = job.shared_mount_path
    if job.node_selector:
        pod["nodeSelector"] = dict(job.node_selector)
    if job.tolerations:
        pod["tolerations"] = copy.deepcopy(job.tolerations)
    if job.service_account:
        pod["serviceAccountName"] = job.service_account
    return manifest


# -- the cluster ------------------------------------------------------------------------------------------------

def _custom_objects_api():
    """The cluster's CustomObjectsApi: in-cluster credentials (a KFP step's service account), else ~/.kube/config."""
    from kubernetes import client
    from kubernetes import config as kube_config

    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    return client.CustomObjectsApi()


def submit_trainjob(manifest: dict, api=None) -> str:
    """Create the (validated) TrainJob; its name."""
    api = api or _custom_objects_api()
    namespace = manifest["metadata"]["namespace"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    return manifest["metadata"]["name"]


def wait_for_trainjob(name: str, namespace: str, timeout_seconds: float, poll_seconds: float = 30.0, api=None,
                      log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic) -> dict:
    """Poll the TrainJob until its ``Complete`` condition (returns its status) or ``Failed`` (raises
    :class:`TrainJobError` with the controller's reason and message); after ``timeout_seconds`` raise, leaving
    the job running (a person decides whether to delete it)."""
    api = api or _custom_objects_api()
    deadline = clock() + timeout_seconds
    where = f"{namespace}/{name}"
    logs = f"kubectl logs -n {namespace} -l jobset.sigs.k8s.io/jobset-name={name} --prefix"
    last = None
    while True:
        status = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Failed" in conditions:
            failed = conditions["Failed"]
            raise TrainJobError(f"TrainJob {where} failed: {failed.get('reason', '?')}: "
                                f"{' '.join(str(failed.get('message', '')).split())} (logs: {logs})")
        if "Complete" in conditions:
            return status
        state = ", ".join(sorted(conditions)) or "pending"
        if state != last:
            log(f"trainjob: {where} {state}")
            last = state
        if clock() >= deadline:
            raise TrainJobError(f"TrainJob {where} did not finish within {timeout_seconds:.0f} s (now: {state}); "
                                f"it is still there: `kubectl get trainjob -n {namespace} {name}`, logs: {logs}")
        sleep(poll_seconds)


def launch_teacher_training(config: RunConfig, dataset_dir: str | Path, out_dir: str | Path,
                            log: Callable[[str], None] = print, api=None) -> Path:
    """Fine-tune the teacher on the prepared dataset in ``dataset_dir`` and leave it in ``out_dir``, the way
    ``teacher.distributed`` says: in this process, torchrun on this machine (``nproc_per_node`` > 1), or a
    TrainJob on the cluster (``launcher: trainjob``).

    The TrainJob's nodes see only the shared volume (``trainjob.shared_mount_path``, mounted here too: the
    pipeline mounts it on the teacher step's pod). Paths elsewhere (a KFP artifact's local path) are staged: the
    dataset is copied to ``<mount>/<job name>/data``, the nodes write ``<mount>/<job name>/teacher``, and that is
    copied to ``out_dir``. The choice of launcher is relevance.teacher.launch.launch_teacher's, with
    :func:`train_as_trainjob` as its TrainJob launcher."""
    from relevance.teacher.launch import launch_teacher

    def remote(config: RunConfig, dataset_dir: str | Path, out_dir: str | Path, log: Callable[[str], None]) -> Path:
        return train_as_trainjob(config, dataset_dir, out_dir, log=log, api=api)

    return launch_teacher(config, dataset_dir, out_dir, remote=remote, log=log)


def train_as_trainjob(config: RunConfig, dataset_dir: str | Path, out_dir: str | Path,
                      log: Callable[[str], None] = print, api=None) -> Path:
    """The teacher trained by a TrainJob on the cluster (``teacher.distributed.launcher: trainjob``), left in
    ``out_dir``: staged on the shared volume as :func:`launch_teacher_training` describes, submitted, waited for."""
    settings = config.teacher.distributed
    job = settings.trainjob
    mount = Path(job.shared_mount_path)
    if not mount.is_dir():
        raise TrainJobError(f"the shared volume {job.shared_volume_claim} is not mounted here at {mount} "
                            "(teacher.distributed.trainjob.shared_mount_path): the TrainJob's nodes could not read the "
                            "dataset nor leave the teacher where this step finds it")
    name = f"{job.name_prefix}-{uuid.uuid4().hex[:12]}"
    staged_data, staged_out = Path(dataset_dir), Path(out_dir)
    if not on_volume(staged_data, mount):
        staged_data = mount / name / "data"
        shutil.copytree(dataset_dir, staged_data)
        log(f"trainjob: dataset staged on the shared volume: {staged_data}")
    if not on_volume(staged_out, mount):
        staged_out = mount / name / "teacher"
    manifest = validate_trainjob(render_trainjob(config, staged_data, staged_out, name=name))
    submit_trainjob(manifest, api)
    namespace = manifest["metadata"]["namespace"]
    log(f"trainjob: submitted {namespace}/{name}: {settings.num_nodes} node(s) × {settings.nproc_per_node} "
        f"process(es) on {job.runtime}")
    wait_for_trainjob(name, namespace, job.timeout_seconds, job.poll_seconds, api, log)
    if not (staged_out / "manifest.json").exists():
        raise TrainJobError(f"TrainJob {namespace}/{name} completed, but no teacher is in {staged_out}: is "
                            f"{job.shared_volume_claim} a ReadWriteMany volume mounted here at {mount}, as on the "
                            "nodes?")
    if staged_out != Path(out_dir):
        shutil.copytree(staged_out, out_dir, dirs_exist_ok=True)
    return Path(out_dir)


def on_volume(path: str | Path, mount: Path) -> bool:
    """Whether ``path`` (made absolute, ``..`` resolved) lies on the volume mounted at ``mount``."""
    resolved = Path(path).resolve()
    return resolved == mount.resolve() or mount.resolve() in resolved.parents
