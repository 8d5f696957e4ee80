"""What the training runs ask a Kubernetes cluster for: the teacher's processes and nodes (a local launch or a Kubeflow
TrainJob), and the compiled pipeline's pods (``cluster``: each step's pod, retries, the labelling fan-out, the data
volume, secrets)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from relevance.config.base import K8S_NAME, Strict
from relevance.config.pods import STEP_BASELINE, RetryBackoff, StepSettings, cpu_cores, memory_bytes
from relevance.config.steps import PIPELINE_STEPS, STEPS, StepNames, require_pipeline_steps


class TrainJobConfig(Strict):
    """The teacher fine-tune as a Kubeflow Trainer v2 ``TrainJob`` (relevance.platform.trainjob): what the cluster
    admin provides (the runtime, a GPU node pool, a shared volume) and what each node runs."""

    runtime: str = Field("torch-distributed", pattern=K8S_NAME)  # a ClusterTrainingRuntime (or TrainingRuntime)
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"
    image: str = Field("relevance:0.1.0", min_length=1)  # infra/docker, pushed where the cluster can pull it
    namespace: str = Field("relevance", pattern=K8S_NAME)
    name_prefix: str = Field("relevance-teacher", pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    gpus_per_node: int | None = Field(None, ge=0)  # None: one per process (nproc_per_node); 0: CPU nodes
    gpu_resource: str = "nvidia.com/gpu"
    cpu_per_node: str | None = None  # Kubernetes quantities, e.g. "16" and "128Gi"
    memory_per_node: str | None = None
    # A ReadWriteMany PersistentVolumeClaim mounted at the same path in the launching pod and on every node: the
    # dataset is read from it and rank 0 writes the teacher to it.
    shared_volume_claim: str = Field("relevance-shared", pattern=K8S_NAME)
    shared_mount_path: str = Field("/mnt/relevance", pattern=r"^/\S*$")
    node_selector: dict[str, str] = Field(default_factory=dict)  # the GPU node pool
    tolerations: list[dict[str, str | int]] = Field(default_factory=list)  # e.g. the GPU nodes' NoSchedule taint
    service_account: str | None = Field(None, pattern=K8S_NAME)
    env: dict[str, str] = Field(default_factory=dict)  # e.g. NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_DEBUG
    timeout_seconds: float = Field(24 * 3600.0, gt=0)  # the launcher stops waiting (the job keeps running)
    poll_seconds: float = Field(30.0, gt=0)


class DistributedConfig(Strict):
    """Teacher fine-tuning on several processes (relevance.models.distributed). The defaults are one process.

    ``launcher: local`` runs in this process (``nproc_per_node: 1``) or under torchrun on this machine; ``trainjob``
    submits a Kubeflow TrainJob of ``num_nodes`` × ``nproc_per_node`` processes and waits for it. ``strategy``:
    ``ddp`` replicates the model on every process, ``fsdp`` shards parameters, gradients and optimizer state (for
    a teacher whose training state does not fit one device). ``teacher.batch_size`` is the global batch: the same
    config trains the same model on any number of processes.
    """

    launcher: Literal["local", "trainjob"] = "local"
    nproc_per_node: int = Field(1, ge=1)  # one per GPU
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    # How long a collective may wait (e.g. the other ranks for rank 0's calibration and save) before it fails.
    timeout_minutes: float = Field(30.0, gt=0)
    trainjob: TrainJobConfig = Field(default_factory=TrainJobConfig)

    @model_validator(mode="after")
    def _nodes_need_a_cluster(self) -> DistributedConfig:
        if self.num_nodes > 1 and self.launcher != "trainjob":
            raise ValueError(f"teacher.distributed.num_nodes={self.num_nodes} needs launcher: trainjob (a local run "
                             f"has one node), got launcher: {self.launcher}")
        return self


class LabelFanOutConfig(Strict):
    """The pipeline's labelling fan-out (``cluster.labeling``; the one-machine labelling job's own settings are
    :class:`relevance.config.ml.PoolLabellingConfig`, ``labeling``).

    How fast one label pod labels and what the fan-out must meet: the inputs of relevance.labels.capacity,
    which chooses the fan-out's parallelism (when the pipeline is compiled, for ``expected_pool_rows``) and the
    shard size (in the build_pool step, for the pool's actual rows). In the pipeline these replace
    ``labeling.shard_rows``, which stays the shard size of the one-machine chain (``relevance label``/``run``)."""

    # One label pod's teacher throughput on its device(s); benchmarks/labelling_cost.py measures it. Default: the
    # MiniLM-L6 teacher in fp32 labelled Home Depot at 180 pairs/s on 2 AVX2 cores (measured, DESIGN.md), so
    # ~360 on the 4-core label pod (estimated: cores assumed to scale linearly).
    pairs_per_s_per_device: float = Field(360.0, gt=0)
    shard_overhead_s: float = Field(20.0, gt=0)  # per shard: pod start, teacher download and load (estimated)
    deadline_s: float = Field(3600.0, gt=0)  # the labelling fan-out's wall time, one retried shard included
    max_shard_s: float = Field(600.0, gt=0)  # longest shard: bounds the work a preempted pod throws away
    expected_pool_rows: int = Field(5_000_000, ge=1)  # the pool size the parallelism is planned for
    max_devices: int = Field(16, ge=1)  # quota: the most label pods at once

    @model_validator(mode="after")
    def _shard_has_time(self) -> LabelFanOutConfig:
        if self.shard_overhead_s >= self.max_shard_s:
            raise ValueError(f"cluster.labeling.max_shard_s ({self.max_shard_s:g} s) must exceed shard_overhead_s "
                             f"({self.shard_overhead_s:g} s), so that a shard has time to label something")
        return self


class DataVolume(Strict):
    """A PersistentVolumeClaim mounted into the steps that read paths from the config (data.path,
    validation.reference, teacher.backbone, student.encoder, features.repo). Artifacts between steps travel
    through KFP's pipeline root (object store) instead. Several steps' pods may mount it at once (features,
    teacher and distillation run in parallel; the labelling fan-out too if ``steps`` adds label_shard): the claim
    must be ReadOnlyMany or ReadWriteMany."""

    claim_name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    mount_path: str = Field("/mnt/data", pattern=r"^/\S*$")
    steps: StepNames = Field(default_factory=lambda: [step.name for step in STEPS if step.mounts_data])


class SecretEnv(Strict):
    """Keys of a Kubernetes Secret as environment variables of some steps (e.g. MLflow or object-store
    credentials for the steps that use the registry)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    env: dict[str, str] = Field(min_length=1)  # secret key → environment variable
    steps: StepNames = Field(default_factory=lambda: [step.name for step in STEPS if step.uses_registry])


class ClusterConfig(Strict):
    """What the compiled training pipeline asks a Kubernetes cluster for, step by step.

    KFP fixes resources, accelerators, placement, retries and the fan-out's parallelism in the PipelineSpec, so
    this section takes effect when the pipeline is *compiled* (``relevance pipeline compile -p gpu`` or
    ``-c config.yaml``; ``submit``, ``schedule`` and ``run --local`` compile with the run's own config). Changing
    it in a run's ``overrides_json`` changes nothing on the pods. kfp.local ignores resources (with a warning).
    """

    default: StepSettings = Field(default_factory=StepSettings)  # every step, over STEP_BASELINE
    steps: dict[str, StepSettings] = Field(default_factory=dict)  # per step, over `default`
    backoff: RetryBackoff = Field(default_factory=RetryBackoff)
    labeling: LabelFanOutConfig = Field(default_factory=LabelFanOutConfig)
    data_volume: DataVolume | None = None
    secrets: list[SecretEnv] = Field(default_factory=list)
    image_pull_secrets: list[str] = Field(default_factory=list)  # Secrets for a private image registry

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not n or not all(c.isascii() and (c.islower() or c.isdigit() or c in "-.")
                                                   for c in n)]
        if bad:
            raise ValueError(f"cluster.image_pull_secrets: expected Kubernetes Secret names (lower-case letters, "
                             f"digits, '-', '.'), got {bad}")
        return names

    def step(self, name: str) -> StepSettings:
        """``name``'s settings: its own, else ``default``'s, else the baseline's."""
        if name not in PIPELINE_STEPS:
            raise ValueError(f"unknown pipeline step {name!r}; expected one of {list(PIPELINE_STEPS)}")
        own = self.steps.get(name, StepSettings())
        values = {}
        for field in StepSettings.model_fields:
            layers = (own, self.default, STEP_BASELINE)
            values[field] = next((getattr(layer, field) for layer in layers if getattr(layer, field) is not None),
                                 None)
        return StepSettings.model_validate(values)

    @model_validator(mode="after")
    def _steps_make_sense(self) -> ClusterConfig:
        require_pipeline_steps(self.steps, "cluster.steps")
        for name in PIPELINE_STEPS:
            step = self.step(name)
            where = f"cluster.steps.{name}"
            if step.cpu_limit and cpu_cores(step.cpu_limit) < cpu_cores(step.cpu_request):
                raise ValueError(f"{where}: cpu_limit must be at least cpu_request ({step.cpu_request}), got "
                                 f"{step.cpu_limit}")
            if step.memory_limit and memory_bytes(step.memory_limit) < memory_bytes(step.memory_request):
                raise ValueError(f"{where}: memory_limit must be at least memory_request ({step.memory_request}), "
                                 f"got {step.memory_limit}")
            if bool(step.accelerator_type) != bool(step.accelerator_count):
                raise ValueError(f"{where}: expected accelerator_type and accelerator_count >= 1 together, got "
                                 f"type {step.accelerator_type} and count {step.accelerator_count}")
        return self
