"""The pipeline's steps as KFP v2 components, each a thin wrapper over one function of the core library.

Every component runs in the project image (infra/docker), which has `relevance`, its pinned dependencies and the
Feast repo definitions installed, so nothing is pip-installed at run time (``install_kfp_package=False``; a
cluster without internet works). The image is ``$RELEVANCE_IMAGE`` at compile time, and the pipeline can
override it per run with its ``image`` parameter.

KFP serialises each function's source into the pipeline YAML, so imports live inside the functions. Every step
reads the run's configuration from the ``run_config`` artifact (a validated relevance.config.RunConfig as JSON,
made once by :func:`resolve_config`, read back by relevance.config.read_run_config), so a step never re-derives
settings on its own. (An artifact rather than a
string parameter also because kfp.local replaces task-output parameters inside a ParallelFor with the loop item.)
"""

import os
from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from relevance.config.steps import declared_step

IMAGE = os.environ.get("RELEVANCE_IMAGE", "ghcr.io/relevance-platform/relevance:0.1.0")


def component(function):
    """A KFP component of the step declared under the function's name (relevance.config.steps): a component
    nobody declared would have no pod, retries or caching of its own."""
    declared_step(function.__name__)
    return dsl.component(function, base_image=IMAGE, install_kfp_package=False)


@component
def resolve_config(profile: str, overrides_json: str, run_config: Output[Artifact]):
    """Validate the run's settings once: a profile plus JSON overrides → the RunConfig (JSON) every step reads."""
    import json

    from relevance.config import build_config, require_pipeline_settings

    overrides = json.loads(overrides_json or "{}")
    with open(run_config.path, "w") as out:
        out.write(require_pipeline_settings(build_config(profile, overrides)).model_dump_json(indent=2))


@component
def prepare_data(run_config: Input[Artifact], dataset: Output[Dataset]):
    """Read the source named by data.* (an adapter, a prepared directory, or the synthetic shop) into the
    data contract's tables."""
    from relevance.config import read_run_config
    from relevance.data import prepare

    prepare(read_run_config(run_config.path).data, dataset.path)


@component
def validate_data(run_config: Input[Artifact], dataset: Input[Dataset], data_docs: Output[Artifact],
                  summary: Output[Markdown], validation: Output[Metrics]):
    """Great Expectations suites over every table. Never fails itself, so its Data Docs stay as an artifact;
    the next step (require_valid_data) stops the pipeline when a suite failed."""
    import json

    from relevance.config import read_run_config
    from relevance.platform.validation import validate_dataset

    report = validate_dataset(dataset.path, read_run_config(run_config.path).validation, data_docs.path)
    validation.log_metric("success", float(report.success))
    validation.log_metric("failed_expectations", float(len(report.failures)))
    validation.log_metric("checked_expectations", float(sum(report.checked.values())))
    with open(summary.path, "w") as out:
        out.write("# Data validation (Great Expectations)\n\n```\n" + report.summary() + "\n```\n")
    data_docs.metadata["report"] = json.dumps(report.to_dict())


@component
def require_valid_data(validation: Input[Metrics], data_docs: Input[Artifact]):
    """The gate in front of training: fail, with every failed expectation in the message, if a suite failed."""
    import json

    if float(validation.metadata["success"]) != 1.0:
        failures = json.loads(data_docs.metadata["report"])["failures"]
        raise RuntimeError("data validation failed; training stops here. See the Data Docs artifact.\n"
                           + "\n".join(failures))


@component
def compute_features(run_config: Input[Artifact], dataset: Input[Dataset], feature_repo: Output[Artifact]):
    """The student's item features → Feast offline store (parquet) → `feast apply` → materialize online."""
    from relevance.config import read_run_config
    from relevance.data.schema import Dataset as Tables
    from relevance.platform.feature_store import materialize_features

    config = read_run_config(run_config.path)
    versions = materialize_features(config, Tables.load(dataset.path), feature_repo.path)
    feature_repo.metadata.update(versions)


@component
def finetune_teacher(run_config: Input[Artifact], dataset: Input[Dataset], teacher: Output[Model], metrics: Output[Metrics]):
    """Fine-tune the cross-encoder teacher on the human-graded train split (early stopping on valid minus its
    judge-check slice): in this pod,
    under torchrun on its GPUs (teacher.distributed.nproc_per_node), or as a Kubeflow TrainJob on several nodes
    (teacher.distributed.launcher: trainjob), which this step submits and waits for."""
    import json
    from pathlib import Path

    from relevance.config import read_run_config
    from relevance.platform.trainjob import launch_teacher_training

    config = read_run_config(run_config.path)
    launch_teacher_training(config, dataset.path, Path(teacher.path))
    manifest = json.loads((Path(teacher.path) / "manifest.json").read_text())
    teacher.metadata["teacher_version"] = manifest["teacher_version"]
    for name, value in manifest.get("metrics", {}).items():
        if isinstance(value, (int, float)):
            metrics.log_metric(name, float(value))


@component
def build_pool(run_config: Input[Artifact], dataset: Input[Dataset], parallelism: int,
               pool: Output[Dataset]) -> List[int]:
    """The unlabelled pool (impressions + the candidate channels' pairs, minus judged and held-out pairs:
    relevance.labels.pool); returns the shard indices the labelling fans out over. The shard size is planned
    here, now that the pool's rows are known, for the fan-out's ``parallelism`` (fixed when the pipeline was
    compiled): relevance.labels.capacity. It travels to the label shards in the pool's metadata, with the plan.
    The student channel's student (candidates.student_model) is a path on the data volume that names one
    version: this step is cached by its config."""
    import json
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    from relevance.common.console import log
    from relevance.config import read_run_config
    from relevance.data.schema import Dataset as Tables
    from relevance.labels.capacity import plan_for
    from relevance.labels.pool import build_pool as build

    config = read_run_config(run_config.path)
    # The embedding channel's cache is scratch here (the distillation step embeds into its own).
    with tempfile.TemporaryDirectory() as embeddings:
        build(config, Tables.load(dataset.path, with_impressions=False), Path(pool.path),
              Path(dataset.path) / "impressions.parquet", embeddings_dir=embeddings)
    rows = pq.ParquetFile(pool.path).metadata.num_rows
    if rows == 0:
        return []  # nothing to label: distillation says so
    plan = plan_for(config.cluster.labeling, pool_rows=rows, max_devices=int(parallelism))
    log(f"labelling plan: {plan.summary()}")
    if not plan.fits:
        log(f"warning: the pool has {rows:,} rows, planned for {config.cluster.labeling.expected_pool_rows:,}; "
            f"at parallelism {parallelism} labelling will miss the {plan.deadline_s:,.0f} s deadline. Compile "
            "with cluster.labeling.expected_pool_rows set to the pool's size to plan more devices.")
    pool.metadata["shard_rows"] = plan.shard_rows
    pool.metadata["labelling_plan"] = json.dumps(plan.to_dict())
    return list(range(plan.shards))


@component
def label_shard(run_config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model], pool: Input[Dataset],
                shard_index: int, labels: Output[Dataset]):
    """Teacher soft labels for one shard of the pool (one task of the fan-out), of the size build_pool planned.
    Safe to retry: a shard file is written atomically, whole or not at all."""
    from relevance.config import read_run_config
    from relevance.data.schema import Dataset as Tables
    from relevance.labels.labelling import label_pool

    config = read_run_config(run_config.path)
    shard_rows = int(pool.metadata["shard_rows"])  # a float after kfp.local's JSON round trip
    label_pool(teacher.path, pool.path, Tables.load(dataset.path, with_impressions=False), labels.path,
               config.labeling.model_copy(update={"shard_rows": shard_rows}), shards=[int(shard_index)])


@component
def distill_student(run_config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model], pool: Input[Dataset],
                    labels: Input[List[Dataset]], feature_repo: Input[Artifact], validation: Input[Metrics],
                    student: Output[Model], metrics: Output[Metrics]):
    """Check the fan-out's label shards (the contract on each, Great Expectations on a sample across all), then
    distil the student out of core, shard by shard, on the item features read from the Feast offline store: the
    ones serving reads online."""
    import json
    import tempfile
    from pathlib import Path

    from relevance.config import read_run_config
    from relevance.data.schema import Dataset as Tables
    from relevance.labels.labelling import label_chunks
    from relevance.platform.feature_store import built_encoder, item_features_from_store, require_same_encoder
    from relevance.platform.validation import validate_label_chunks
    from relevance.student.distillation import train_students
    from relevance.student.featurizer import build_featurizer, featurizer_settings

    config = read_run_config(run_config.path)
    tables = Tables.load(dataset.path, with_impressions=False)
    chunks = label_chunks([shard.path for shard in labels], tables.num_grades, pool_path=pool.path)
    validate_label_chunks(chunks, tables.num_grades, config.validation).raise_for_failures()
    stored = item_features_from_store(feature_repo.path, tables.items["item_id"].tolist())
    lineage = {"feature_views": dict(feature_repo.metadata), "gx_success": float(validation.metadata["success"])}
    with tempfile.TemporaryDirectory() as cache:  # query embeddings only: items come from the store
        featurizer = build_featurizer(tables.items, featurizer_settings(config), cache, stored)
        require_same_encoder(built_encoder(feature_repo.path), featurizer.cache.encoder.fingerprint,
                             f"feature repo {feature_repo.path}")  # the items' vectors: the item tower's
        train_students(config, tables, Path(teacher.path), chunks, {"student": Path(student.path)}, featurizer,
                       lineage)
    manifest = json.loads((Path(student.path) / "manifest.json").read_text())
    for name, value in manifest.get("metrics", {}).items():
        if isinstance(value, (int, float)):
            metrics.log_metric(name, float(value))


@component
def evaluate_student(run_config: Input[Artifact], dataset: Input[Dataset], student: Input[Model], teacher: Input[Model],
                     feature_repo: Input[Artifact], evaluation: Output[Metrics], confusion: Output[ClassificationMetrics],
                     report: Output[HTML]):
    """Student, teacher, the registry's champion and the baselines (majority, BM25, GBDTs on the student's features
    read from Feast) on the same evaluation split; decides the gate."""
    from pathlib import Path

    from relevance.config import read_run_config
    from relevance.data.schema import Dataset as Tables
    from relevance.platform.evaluate_step import evaluate_challenger

    config = read_run_config(run_config.path)
    outcome = evaluate_challenger(config, Tables.load(dataset.path), Path(student.path), Path(teacher.path),
                                  Path(report.path), Path(feature_repo.path))
    for name, value in outcome["metrics"].items():
        evaluation.log_metric(name, float(value))
    evaluation.metadata["gate_passed"] = outcome["gate_passed"]
    evaluation.metadata["gate_reason"] = outcome["gate_reason"]
    confusion.log_confusion_matrix(outcome["grade_names"], outcome["confusion_matrix"])


@component
def challenger_gate(evaluation: Input[Metrics]) -> bool:
    """Whether the new student may become `challenger` (decided by evaluate_student; the reason is in its
    metadata). A separate one-output step because kfp.local resolves dsl.If only on a task's single output."""
    print(evaluation.metadata["gate_reason"])
    return bool(evaluation.metadata["gate_passed"])


@component
def export_onnx(run_config: Input[Artifact], dataset: Input[Dataset], student: Input[Model],
                feature_repo: Input[Artifact], onnx_model: Output[Model]):
    """The serving bundle: student and query encoder as ONNX (dynamic batch, each checked against torch), the
    tokenizer, the catalog's BM25 index, and the Triton model repository that the InferenceService loads. The
    bundle names the versioned Feast project compute_features materialized: the transformer reads that one."""
    from pathlib import Path

    from relevance.config import read_run_config
    from relevance.data.schema import Dataset as Tables
    from relevance.serving.model_repository import build_model_repository
    from relevance.student.export import export_bundle

    config = read_run_config(run_config.path)
    items = Tables.load(dataset.path, with_impressions=False).items
    for result in export_bundle(student.path, onnx_model.path, items,
                                feature_project=feature_repo.metadata.get("project")):
        onnx_model.metadata[f"{result.path.stem}_max_abs_diff"] = float(result.max_abs_diff)
    model_dir = build_model_repository(onnx_model.path, Path(onnx_model.path) / "model_repository", config.serving)
    onnx_model.metadata["triton_model"] = model_dir.name


@component
def check_refresh(run_config: Input[Artifact], dataset: Input[Dataset], refresh: bool):
    """A refresh run stops here unless there is something to refresh: a champion, no canary running, judgments
    that changed since the champion was trained. A plain run (refresh off) passes."""
    if not refresh:
        print("not a refresh run: nothing to check")
        return
    from pathlib import Path

    from relevance.config import read_run_config
    from relevance.data.schema import Dataset as RelevanceDataset
    from relevance.serving.canary.refresh import check_refresh as check

    config = read_run_config(run_config.path)
    print(f"refresh: {check(config, RelevanceDataset.load(Path(dataset.path), with_impressions=False))}")


@component
def register_models(run_config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model], student: Input[Model],
                    onnx_model: Input[Model], evaluation: Input[Metrics], validation: Input[Metrics],
                    feature_repo: Input[Artifact]) -> int:
    """Register teacher and student in MLflow with params, metrics and lineage; the student as `challenger`."""
    from pathlib import Path

    from relevance.config import read_run_config
    from relevance.platform.registry import register_run

    config = read_run_config(run_config.path)
    versions = register_run(config, Path(dataset.path), Path(teacher.path), Path(student.path),
                            Path(onnx_model.path), dict(evaluation.metadata), dict(validation.metadata),
                            dict(feature_repo.metadata))
    return versions["student"]


@component
def start_canary(run_config: Input[Artifact], model_version: int, target: str):
    """The refreshed student under canary at canary.refresh_percent: kubectl on a cluster, the registry's canary
    alias alone on kfp.local (``target`` "registry"); `relevance canary watch` decides from there."""
    from relevance.config import read_run_config
    from relevance.serving.canary.refresh import start_refresh_canary

    print(start_refresh_canary(read_run_config(run_config.path), model_version, target))
