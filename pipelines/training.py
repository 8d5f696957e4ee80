"""The training pipeline: prepare → validate → features → teacher → label (fan-out) → student → evaluate →
export → register, with two gates.

- Data gate: `validate_data` writes Great Expectations Data Docs and never fails; `require_valid_data` fails the
  run when a suite failed, so nothing downstream (training, registration) runs, and the docs stay as an artifact.
- Challenger gate (dsl.If): the student is registered as `challenger` only if it meets registry.min_* and beats
  the registry's `champion` on the same evaluation set.

What each pod asks the cluster for (CPU, memory, GPUs, node selectors, tolerations, volumes, secrets, retries) and
the labelling fan-out's parallelism come from the run config's ``cluster`` section. KFP fixes them in the
PipelineSpec, so the pipeline is built for one config (:func:`build_pipeline`); the settings of the steps
themselves still travel as the run's ``profile`` and ``overrides_json`` parameters, whose defaults are that config.

Compile it with `relevance pipeline compile [-p PROFILE | -c CONFIG]`, upload the YAML in the Kubeflow UI, or run
it with `relevance pipeline run --local` (kfp.local, one subprocess per step) or `relevance pipeline submit --host
URL`.
"""

import json
import math
import os

from kfp import dsl, kubernetes

from relevance.components import steps
from relevance.config import (
    PIPELINE_STEPS,
    ClusterConfig,
    build_config,
    cpu_cores,
    declared_step,
    require_pipeline_settings,
)
from relevance.labels.capacity import plan_for

PIPELINE_NAME = "relevance-distillation-training"


def step_name(task: dsl.PipelineTask) -> str:
    """The declared step (relevance.config.steps) that ``task`` runs: its component's name."""
    return task.component_spec.name.replace("-", "_")


def configure_step(task: dsl.PipelineTask, cluster: ClusterConfig, image, thread_env: bool = True):
    """``task`` as its declaration says: its pod's settings from the config's cluster section, KFP's cache off
    where its output must not be reused, and one image for every step, chosen per run."""
    apply_cluster_settings(task, cluster, thread_env)
    if not declared_step(step_name(task)).cacheable:
        task.set_caching_options(False)
    return task.set_container_image(image)


def require_every_step(built: list[str]) -> None:
    """Every declared step is in the DAG: a step declared in relevance.config.steps but never added here fails the
    compilation, not a run."""
    missing = [name for name in PIPELINE_STEPS if name not in built]
    if missing:
        raise ValueError(f"declared pipeline steps missing from the DAG (pipelines/training.py): {missing}")


def apply_cluster_settings(task: dsl.PipelineTask, cluster: ClusterConfig, thread_env: bool = True) -> None:
    """Give ``task`` its step's settings from ``cluster``: requests and limits, accelerators, node selectors,
    tolerations, the data volume, secrets and retries.

    With ``thread_env``, a step with a CPU limit also gets RELEVANCE_THREADS: a container sees every core of its
    node, and torch would start a thread per core against a quota of a few."""
    step = step_name(task)
    settings = cluster.step(step)
    task.set_cpu_request(settings.cpu_request).set_memory_request(settings.memory_request)
    if settings.cpu_limit:
        task.set_cpu_limit(settings.cpu_limit)
        if thread_env:
            task.set_env_variable("RELEVANCE_THREADS", str(max(1, math.floor(cpu_cores(settings.cpu_limit)))))
    if settings.memory_limit:
        task.set_memory_limit(settings.memory_limit)
    if settings.accelerator_type:
        task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.accelerator_count)
    for key, value in settings.node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for toleration in settings.tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator, value=toleration.value,
                                  effect=toleration.effect, toleration_seconds=toleration.toleration_seconds)
    if settings.retries:
        backoff = cluster.backoff
        task.set_retry(settings.retries, backoff_duration=f"{backoff.duration_s}s", backoff_factor=backoff.factor,
                       backoff_max_duration=f"{backoff.max_duration_s}s")
    volume = cluster.data_volume
    if volume is not None and step in volume.steps:
        kubernetes.mount_pvc(task, pvc_name=volume.claim_name, mount_path=volume.mount_path)
    for secret in cluster.secrets:
        if step in secret.steps:
            kubernetes.use_secret_as_env(task, secret_name=secret.name, secret_key_to_env=secret.env)
    if cluster.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, cluster.image_pull_secrets)


def build_pipeline(profile: str = "quick", overrides: dict | None = None, local: bool = False):
    """The training pipeline for one run config (``profile`` plus ``overrides``): its pods sized by the config's
    ``cluster`` section, the labelling fan-out's parallelism planned for ``cluster.labeling.expected_pool_rows``
    (relevance.labels.capacity; a deadline that ``max_devices`` cannot meet is an error here, before any run). The
    config also becomes the default of the pipeline's ``profile`` and ``overrides_json`` parameters, so that a run
    started from the UI without changes runs the config the pods were sized for.

    ``local``: for kfp.local, which ignores resources; the thread count then follows this machine, not the pods'
    CPU limits."""
    config = require_pipeline_settings(build_config(profile, overrides))  # fails here on a bad setting
    cluster = config.cluster
    parallelism = plan_for(cluster.labeling, strict=True).devices
    # Like the pods' resources, fixed at compile time: a run's overrides cannot switch to a TrainJob.
    trainjob = config.teacher.distributed.trainjob if config.teacher.distributed.launcher == "trainjob" else None
    default_profile, default_overrides = profile, json.dumps(overrides or {})
    built = []  # the steps added to the DAG

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Fine-tune an LLM cross-encoder teacher on graded pairs, label a pool, distil a student, "
                              "register it in MLflow as challenger if it beats the champion.")
    def training_pipeline(
        profile: str = default_profile,
        overrides_json: str = default_overrides,
        image: str = steps.IMAGE,
        refresh: bool = False,
    ):
        """Train, evaluate and register a relevance student.

        Args:
            profile: Base settings: quick (demo-sized), default (MiniLM-L6 on CPU) or gpu (decoder teacher, LoRA, bf16).
                The pods' resources were fixed for the default when the pipeline was compiled: to change them,
                compile again (relevance pipeline compile -p PROFILE).
            overrides_json: JSON object merged over the profile, with the keys of relevance.config.RunConfig, e.g.
                {"data": {"source": "homedepot", "path": "/data/homedepot"}, "registry": {"min_ndcg": 0.85}}.
                Its "cluster" key does not resize the pods (they were sized when compiled).
            image: Container image every step runs in (built from infra/docker).
            refresh: A refresh round (grades of served traffic imported): stops unless there are new judgments;
                a registered challenger goes under canary (canary.refresh_percent) for the canary watch.
        """
        def step(task):
            built.append(step_name(task))
            return configure_step(task, cluster, image, thread_env=not local)

        config = step(steps.resolve_config(profile=profile, overrides_json=overrides_json))
        config.set_display_name("resolve config")
        settings = config.outputs["run_config"]
        data = step(steps.prepare_data(run_config=settings))
        validation = step(steps.validate_data(run_config=settings, dataset=data.outputs["dataset"]))
        gate = step(steps.require_valid_data(validation=validation.outputs["validation"],
                                             data_docs=validation.outputs["data_docs"]))
        dataset = data.outputs["dataset"]
        # Before any training: a refresh with nothing new to learn stops in seconds, not after the teacher.
        fresh = step(steps.check_refresh(run_config=settings, dataset=dataset, refresh=refresh)).set_display_name(
            "check refresh")

        features = step(steps.compute_features(run_config=settings, dataset=dataset)).after(gate, fresh)
        teacher = step(steps.finetune_teacher(run_config=settings, dataset=dataset)).after(gate, fresh)
        if trainjob is not None:  # the TrainJob's nodes and this pod meet on the shared volume
            kubernetes.mount_pvc(teacher, pvc_name=trainjob.shared_volume_claim, mount_path=trainjob.shared_mount_path)
        # The shard size is cut in build_pool, for the pool's actual rows and this parallelism.
        pool = step(steps.build_pool(run_config=settings, dataset=dataset, parallelism=parallelism)).after(gate, fresh)
        with dsl.ParallelFor(pool.outputs["Output"], name="label-shards", parallelism=parallelism) as shard_index:
            labels = step(steps.label_shard(run_config=settings, dataset=dataset, teacher=teacher.outputs["teacher"],
                                            pool=pool.outputs["pool"], shard_index=shard_index))
        student = step(steps.distill_student(
            run_config=settings, dataset=dataset, teacher=teacher.outputs["teacher"], pool=pool.outputs["pool"],
            labels=dsl.Collected(labels.outputs["labels"]), feature_repo=features.outputs["feature_repo"],
            validation=validation.outputs["validation"]))
        evaluation = step(steps.evaluate_student(run_config=settings, dataset=dataset,
                                                 student=student.outputs["student"], teacher=teacher.outputs["teacher"],
                                                 feature_repo=features.outputs["feature_repo"]))
        export = step(steps.export_onnx(run_config=settings, dataset=dataset, student=student.outputs["student"],
                                        feature_repo=features.outputs["feature_repo"]))
        # kfp.local has no cluster to patch: a refresh's canary is the registry's alias alone, and the local loop.
        _gate_and_register(step, settings, dataset, refresh, "registry" if local else "kubectl", teacher=teacher,
                           student=student, export=export, evaluation=evaluation, validation=validation,
                           features=features)

    require_every_step(built)
    return training_pipeline


def _gate_and_register(step, settings, dataset, refresh, canary_target: str, **tasks) -> None:
    """The end of the DAG: the challenger gate, registration when it passes, and on a refresh run the canary of the
    version registered (``tasks``: the teacher, student, export, evaluation, validation and features tasks)."""
    decision = step(steps.challenger_gate(evaluation=tasks["evaluation"].outputs["evaluation"]))
    with dsl.If(decision.output == True, name="challenger-gate-passed"):  # noqa: E712 (a KFP condition)
        registered = step(steps.register_models(
            run_config=settings, dataset=dataset, teacher=tasks["teacher"].outputs["teacher"],
            student=tasks["student"].outputs["student"], onnx_model=tasks["export"].outputs["onnx_model"],
            evaluation=tasks["evaluation"].outputs["evaluation"], validation=tasks["validation"].outputs["validation"],
            feature_repo=tasks["features"].outputs["feature_repo"]))
        with dsl.If(refresh == True, name="refresh-starts-canary"):  # noqa: E712 (a KFP condition)
            step(steps.start_canary(run_config=settings, model_version=registered.output, target=canary_target))


def compile_pipeline(out_path: str | os.PathLike, image: str | None = None, profile: str = "quick",
                     overrides: dict | None = None) -> str:
    """Write the pipeline YAML (PipelineSpec) to upload in the Kubeflow UI, built for ``profile`` plus
    ``overrides`` (:func:`build_pipeline`); ``image`` becomes the default of the pipeline's ``image`` parameter."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(profile, overrides), package_path=str(out_path),
                                pipeline_parameters={"image": image} if image else None)
    return str(out_path)
