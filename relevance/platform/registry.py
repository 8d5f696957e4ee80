"""The model registry (MLflow): register teacher and student with params, metrics and lineage; move the
``champion`` and ``challenger`` aliases; roll back.

Local by default: a SQLite backend and file artifacts under runs/mlflow, so the same code serves a laptop and a
cluster (set ``registry.tracking_uri`` or $MLFLOW_TRACKING_URI to the tracking server). A model version's source
is the run's copy of the model directory, so what serving loads is exactly what was evaluated.

Alias semantics:
- ``challenger``: a new student that passed the gate (thresholds, and better than the champion on the same
  evaluation set); canary traffic goes to it.
- ``champion``: what production serves. :func:`Registry.promote` moves it to the challenger and remembers the
  previous champion in the registered model's ``previous_champion`` tag; :func:`Registry.rollback` restores it.

The evaluation and the challenger gate are the core's (relevance.evaluation.challenger); the pipeline's evaluate
step brings them the champion and the Feast features (relevance.platform.evaluate_step). This adapter only records
the outcome (:func:`register_run`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from relevance.common.console import log
from relevance.config import RegistryConfig, RunConfig
from relevance.data.schema import Dataset

CHAMPION, CHALLENGER = "champion", "challenger"
PREVIOUS_CHAMPION_TAG = "previous_champion"
# A version's tag naming what was registered (model versions and lineage): Registry.register's idempotency key.
REGISTRATION_KEY_TAG = "registration_key"
DEFAULT_ROOT = Path("runs/mlflow")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked (unknown model, missing alias, nothing to roll back)."""


def is_not_found(error) -> bool:
    """MLflow's answer for a model that is not registered (RESOURCE_DOES_NOT_EXIST) or an alias that is not set
    (INVALID_PARAMETER_VALUE, "... alias ... not found"), as opposed to a registry that failed to answer."""
    return error.error_code == "RESOURCE_DOES_NOT_EXIST" or (
        error.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(error))


def tracking_uri(config: RegistryConfig) -> str:
    if config.tracking_uri:
        return config.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(DEFAULT_ROOT / 'mlflow.db').resolve()}"


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


@dataclass
class ModelVersionInfo:
    name: str
    version: int
    aliases: list[str]
    run_id: str | None
    source: str
    tags: dict[str, str]

    def line(self) -> str:
        aliases = ",".join(self.aliases) or "-"
        lineage = " ".join(f"{k}={v}" for k, v in sorted(self.tags.items()) if k in
                           ("data_hash", "teacher_version", "gx_success", "accuracy", "ndcg"))
        return f"{self.name} v{self.version} [{aliases}] {lineage}"


class Registry:
    def __init__(self, config: RegistryConfig | None = None, uri: str | None = None):
        self.config = config or RegistryConfig()
        self.uri = uri or tracking_uri(self.config)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # file artifacts next to the database, not in the cwd
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def version_with_key(self, name: str, key: str) -> int | None:
        """The version of ``name`` registered under ``key`` (None: none is). A registry that does not answer is a
        RegistryError, never "not registered": that would register a second version."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{name}'")
        except MlflowException as error:
            if is_not_found(error):
                return None
            raise RegistryError(f"the registry at {self.uri} did not answer for {name}: {error}") from None
        keyed = [int(v.version) for v in found if (v.tags or {}).get(REGISTRATION_KEY_TAG) == key]
        return min(keyed) if keyed else None

    def _fail_unfinished(self, experiment_id: str, key: str) -> None:
        """Runs of an earlier attempt at ``key`` that died before their version was created: marked FAILED, so
        that nobody takes their (maybe half-uploaded) artifacts for a model."""
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.{REGISTRATION_KEY_TAG} = '{key}'")
        for run in runs:
            if run.info.status in ("RUNNING", "SCHEDULED"):
                self.client.set_terminated(run.info.run_id, status="FAILED")
                log(f"registry: run {run.info.run_id} of an interrupted registration of {key} marked FAILED")

    def register(self, name: str, model_dir: str | Path, params: dict, metrics: dict[str, float],
                 tags: dict[str, str], alias: str | None = None, experiment: str = "relevance",
                 key: str | None = None) -> int:
        """Log a run (params, metrics, the model directory) and create a version of registered model ``name``.

        ``key`` makes it idempotent: a version already registered under it is returned (its alias set) instead
        of a second one, so a register step retried after a crash (the pipeline's, the Job's) registers nothing
        twice. The key is checked on the version, the last thing created: a crash before it leaves only a run,
        which the retry marks FAILED and replaces."""
        model_dir = Path(model_dir)
        if not (model_dir / "manifest.json").exists():
            raise RegistryError(f"{model_dir}: not a saved model (no manifest.json)")
        from mlflow.exceptions import MlflowException

        tags = {k: str(v) for k, v in tags.items()}
        experiment_id = self._experiment_id(experiment)
        if key:
            existing = self.version_with_key(name, key)
            if existing is not None:
                # The same content registered again (a retry, or a rerun that changed nothing): never move an
                # alias onto the version that is champion (a challenger must be a new version).
                if alias and self.alias_version(name, CHAMPION) != existing:
                    self.client.set_registered_model_alias(name, alias, str(existing))
                log(f"registry: {name} v{existing} is registered under {key} already; not registered again")
                return existing
            self._fail_unfinished(experiment_id, key)
            tags[REGISTRATION_KEY_TAG] = key
        run = self.client.create_run(experiment_id, run_name=f"{name}", tags=tags)
        run_id = run.info.run_id
        for param, value in _flatten("", params, {}).items():
            self.client.log_param(run_id, param[:250], str(value)[:6000])
        for metric, value in metrics.items():
            self.client.log_metric(run_id, metric.replace("@", "_at_"), float(value))
        self.client.log_artifacts(run_id, str(model_dir), artifact_path="model")
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description="Relevance model registered by the pipeline.")
        version = self.client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                                   tags=tags)
        # Finished only once its version exists: a crash before leaves a RUNNING run, which a retry marks FAILED.
        self.client.set_terminated(run_id)
        if alias:
            self.client.set_registered_model_alias(name, alias, version.version)
        return int(version.version)

    def alias_version(self, name: str, alias: str) -> int | None:
        """The version ``alias`` points at; None when the model or the alias does not exist. A registry that does
        not answer (connection, auth, server error) is a RegistryError, never "no such alias"."""
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as error:
            if is_not_found(error):
                return None
            raise RegistryError(f"the registry at {self.uri} did not answer for {name}@{alias}: {error}") from None

    def versions(self, name: str) -> list[ModelVersionInfo]:
        from mlflow.exceptions import MlflowException

        try:
            # search_model_versions leaves aliases empty: read them from the registered model.
            aliases = self.client.get_registered_model(name).aliases or {}
            found = self.client.search_model_versions(f"name='{name}'")
        except MlflowException:
            return []
        by_version: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(int(version), []).append(alias)
        return sorted((ModelVersionInfo(v.name, int(v.version), sorted(by_version.get(int(v.version), [])), v.run_id,
                                        v.source, dict(v.tags or {})) for v in found), key=lambda v: v.version)

    def download(self, name: str, alias: str, destination: str | Path) -> Path | None:
        """The model directory behind ``name@alias``, copied to ``destination``; None if the alias is unset."""
        version = self.alias_version(name, alias)
        return None if version is None else self.download_version(name, version, destination)

    def download_version(self, name: str, version: int, destination: str | Path) -> Path:
        """The model directory of ``name`` version ``version``, copied to ``destination``."""
        import mlflow.artifacts

        source = self.client.get_model_version(name, str(version)).source
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(destination),
                                                        tracking_uri=self.uri))

    def download_teacher_of(self, student_name: str, alias: str, teacher_name: str,
                            destination: str | Path) -> Path:
        """The teacher the student ``student_name@alias`` was distilled from (its ``teacher_model_version``
        lineage tag), copied to ``destination``. ValueError when there is no such alias or tag (the input is
        wrong); a registry that does not answer stays a RegistryError (worth a retry)."""
        version = self.alias_version(student_name, alias)
        if version is None:
            raise ValueError(f"the registry at {self.uri} has no {student_name}@{alias}")
        tag = self.client.get_model_version(student_name, str(version)).tags.get("teacher_model_version")
        if not tag:
            raise ValueError(f"{student_name} v{version} records no teacher_model_version (registered before the "
                             "lineage tag existed): pass the judge's directory instead")
        return self.download_version(teacher_name, int(tag), destination)

    def _require_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            raise RegistryError(f"no registered model {name!r} at {self.uri}") from None

    def promote(self, name: str, version: int | None = None) -> int:
        """Make ``version`` (default: the challenger) the champion; the old champion is kept for rollback."""
        self._require_model(name)
        if version is None:
            version = self.alias_version(name, CHALLENGER)
            if version is None:
                raise RegistryError(f"{name} has no {CHALLENGER!r} to promote; pass --version")
        known = {v.version for v in self.versions(name)}
        if version not in known:
            raise RegistryError(f"{name} has no version {version}; versions: {sorted(known)}")
        current = self.alias_version(name, CHAMPION)
        if current == version:
            return version
        if current is not None:
            self.client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, str(current))
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        if self.alias_version(name, CHALLENGER) == version:
            self.client.delete_registered_model_alias(name, CHALLENGER)
        return version

    def rollback(self, name: str) -> int:
        """Point ``champion`` back at the version it had before the last promotion."""
        self._require_model(name)
        previous = self.client.get_registered_model(name).tags.get(PREVIOUS_CHAMPION_TAG)
        if not previous:
            raise RegistryError(f"{name}: nothing to roll back to (no {PREVIOUS_CHAMPION_TAG!r} tag; "
                                "was a champion ever replaced?)")
        current = self.alias_version(name, CHAMPION)
        self.client.set_registered_model_alias(name, CHAMPION, previous)
        if current is not None:
            self.client.set_registered_model_tag(name, PREVIOUS_CHAMPION_TAG, str(current))
        return int(previous)


def registration_key(*parts) -> str:
    """What identifies one registration: a hash of the model's content version and everything recorded with it
    (the same inputs, retried, give the same key)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


def register_run(config: RunConfig, dataset_dir: Path, teacher_dir: Path, student_dir: Path, onnx_dir: Path,
                 evaluation: dict, validation: dict, feature_views: dict) -> dict[str, int]:
    """Register the teacher and the student (with its ONNX export) in MLflow; the student becomes `challenger`.

    Lineage tags: the training data's hash, the Great Expectations result, the teacher version and the feature
    views' versions, so any model version can be traced to what it was trained on. Idempotent: a step retried
    after a crash (KFP retries, a killed pod) finds what the first attempt registered and registers nothing twice.
    """
    import shutil
    import tempfile

    from relevance.common.files import read_manifest
    from relevance.evaluation.challenger import largest_ndcg

    dataset = Dataset.load(dataset_dir, with_impressions=False)
    teacher_manifest = read_manifest(teacher_dir, "teacher")
    student_manifest = read_manifest(student_dir, "student")
    from relevance.platform.feature_store import ENCODER_TAG, require_same_encoder

    # Registering would pair the student with the item vectors its features step materialized.
    require_same_encoder(feature_views.get(ENCODER_TAG), student_manifest["encoder_fingerprint"],
                         "the features step's output")
    ndcg = largest_ndcg(config).replace("@", "_at_")
    numbers = {k: float(v) for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lineage = {
        "data_hash": dataset.training_data_hash(), "dataset": dataset.info.name,
        "gx_success": str(bool(float(validation.get("success", 0)))),
        "gx_checked_expectations": str(int(float(validation.get("checked_expectations", 0)))),
        "teacher_version": teacher_manifest["teacher_version"],
        "feature_views": json.dumps(feature_views, sort_keys=True),
        "feature_version": str(student_manifest["feature_version"]),
        # What the transformer sends the predictor: two versions of a canary share one transformer.
        "student_inputs": ",".join(json.loads((Path(onnx_dir) / "bundle.json").read_text())["student_inputs"]),
        "gate_reason": str(evaluation.get("gate_reason", "")),
    }
    registry = Registry(config.registry)
    teacher_version = registry.register(
        config.registry.teacher_name, teacher_dir, {"teacher": config.teacher.model_dump(), "text": config.text.model_dump()},
        {k.removeprefix("teacher_"): v for k, v in numbers.items() if k.startswith("teacher_")}, lineage,
        key=registration_key(config.registry.teacher_name, teacher_manifest["teacher_version"], lineage))
    bundle_json = json.loads((Path(onnx_dir) / "bundle.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "student"
        shutil.copytree(student_dir, bundle)
        shutil.copytree(onnx_dir, bundle / "onnx")
        student_version = registry.register(
            config.registry.student_name, bundle,
            {"student": config.student.model_dump(), "candidates": config.candidates.model_dump(),
             "labeling": config.labeling.model_dump()},
            {k.removeprefix("student_"): v for k, v in numbers.items() if k.startswith("student_")},
            {**lineage, "teacher_model_version": str(teacher_version),
             # The vectors it reads: its encoder's (tuned towers change every vector), which the feature
             # project's item_embeddings tag and a canary's shared transformer are checked against.
             "encoder_fingerprint": str(student_manifest["encoder_fingerprint"]),
             # The separate query tower its bundle embeds queries with, if any ("": the encoder's own).
             "query_encoder_fingerprint": str(student_manifest.get("query_encoder_fingerprint") or ""),
             "accuracy": f"{numbers.get('student_accuracy', float('nan')):.4f}",
             "ndcg": f"{numbers.get(f'student_{ndcg}', float('nan')):.4f}"},
            alias=CHALLENGER, key=registration_key(config.registry.student_name, student_manifest["student_version"],
                                                   bundle_json, lineage, teacher_version))
    log(f"registry: {config.registry.teacher_name} v{teacher_version}, {config.registry.student_name} "
         f"v{student_version} as {CHALLENGER} ({registry.uri})")
    return {"teacher": teacher_version, "student": student_version}
