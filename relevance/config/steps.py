"""The training pipeline's steps, each declared once.

A :class:`Step` says what the rest of the code would otherwise repeat: its name (the KFP component in
relevance.components.steps and its key in ``cluster.steps``), the name and config sections of the output the
one-machine chain caches for it, its pod on CPU nodes and on the gpu profile's GPU nodes, and whether it may be
retried or cached, mounts the data volume or gets the registry's secrets. The config (``cluster.steps``, the
profiles' pods, the default steps of ``cluster.data_volume`` and ``cluster.secrets``), the chain
(relevance.chain.STEP_SETTINGS), the components (each must be a declared step) and the pipeline
(pipelines/training.py: pods, retries, caching) all read :data:`STEPS`. Adding a step is one entry here, plus its
component and its place in the DAG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from relevance.config.pods import StepSettings, Toleration


@dataclass(frozen=True)
class Step:
    name: str
    # The one-machine chain's name for the output this step makes (recorded in workdir/steps.json, so never
    # renamed) and the config sections that output depends on: a change in one of them invalidates it.
    output: str | None = None
    settings: tuple[str, ...] = ()
    pod: StepSettings | None = None  # on CPU nodes, over cluster.default (every profile)
    gpu_pod: StepSettings | None = None  # the gpu profile's pod, in place of `pod`: the steps that run the teacher
    cacheable: bool = True  # may KFP reuse its output from an earlier run with the same inputs
    # Reads paths from the config (data.path, validation.reference, teacher.backbone, student.encoder,
    # features.repo): cluster.data_volume is mounted here unless its `steps` say otherwise.
    mounts_data: bool = False
    uses_registry: bool = False  # cluster.secrets are given to it unless their `steps` say otherwise


def _pod(cpu: str | None = None, memory: tuple[str, str] | None = None, **more) -> StepSettings:
    """A pod of ``cpu`` cores (its request and its limit) and ``memory`` (request, limit); only what is given is
    set, so that the rest comes from ``cluster.default``."""
    values = dict(more)
    if cpu is not None:
        values.update(cpu_request=cpu, cpu_limit=cpu)
    if memory is not None:
        values.update(memory_request=memory[0], memory_limit=memory[1])
    return StepSettings(**values)


# Pods of the compiled pipeline on CPU nodes. Sizes come from measured peaks: the whole Home Depot chain in one
# process peaked at 7.2 GB RSS, the MiniLM-L6 teacher's training at about 2.4 GB (DESIGN.md); a step's process
# with relevance imported holds about 120 MB before it reads anything. CPU limits equal the requests where a
# step computes, since the limit is also its thread count. DEFAULT_POD is every profile's cluster.default.
DEFAULT_POD = StepSettings(cpu_request="1", cpu_limit="2", memory_request="2Gi", memory_limit="4Gi", retries=2)
# The small steps only decide (the config, the two gates): a rerun would fail the same way, so no retries.
_SMALL = StepSettings(cpu_request="250m", cpu_limit="1", memory_request="1Gi", memory_limit="2Gi", retries=0)


def _gpu_pod(memory: tuple[str, str], **more) -> StepSettings:
    """The decoder teacher's steps on one H100 each (every step that runs the teacher: fine-tune, labelling, the
    teacher's labels of the judged train pairs in distillation, its evaluation). Host memory holds the bf16 weights
    (16 GB for 8B parameters) while they load, and a merged copy after LoRA. The node selector and the taint are
    NVIDIA GPU feature discovery's and the usual GPU-pool taint: a cluster admin adapts them (infra/README.md)."""
    return _pod("8", memory, accelerator_type="nvidia.com/gpu", accelerator_count=1,
                node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")], **more)


_STUDENT_SETTINGS = ("data", "text", "candidates", "student", "gbdt")

STEPS: tuple[Step, ...] = (
    Step("resolve_config", pod=_SMALL),
    Step("prepare_data", output="data", settings=("data",), mounts_data=True),
    # A refresh run's first check (serving/canary/refresh.py): a champion, no canary running, new judgments. It
    # reads the registry, which changes: never cached.
    Step("check_refresh", pod=_SMALL, cacheable=False, uses_registry=True),
    Step("validate_data", pod=_pod(memory=("4Gi", "8Gi")), mounts_data=True),
    Step("require_valid_data", pod=_SMALL),
    Step("compute_features", pod=_pod("4", ("4Gi", "8Gi")), mounts_data=True),
    Step("finetune_teacher", output="teacher", settings=("data", "text", "teacher"),
         pod=_pod("8", ("8Gi", "16Gi"), retries=1), gpu_pod=_gpu_pod(("64Gi", "96Gi"), retries=1), mounts_data=True),
    # mounts_data: the embedding channel's encoder (student.encoder) may be a path on the data volume, and the
    # student channel's student (candidates.student_model) is one. KFP caches this step by its config, so that path
    # must name one student version (e.g. .../student-<version>): a new champion saved over it would not be seen.
    Step("build_pool", output="pool", settings=("data", "text", "candidates"), pod=_pod("2", ("4Gi", "8Gi")),
         mounts_data=True),
    # cluster.labeling.pairs_per_s_per_device is for this pod: 4 cores.
    Step("label_shard", pod=_pod("4", ("4Gi", "8Gi"), retries=3), gpu_pod=_gpu_pod(("48Gi", "64Gi"), retries=3)),
    Step("distill_student", output="students", settings=_STUDENT_SETTINGS, pod=_pod("4", ("8Gi", "16Gi")),
         gpu_pod=_gpu_pod(("48Gi", "64Gi")), mounts_data=True),
    # It grows the GBDT baselines on the student's features (the chain's "gbdt" output), and compares with the
    # registry's current champion, which changes: never cached.
    Step("evaluate_student", output="gbdt", settings=_STUDENT_SETTINGS, pod=_pod("4", ("4Gi", "8Gi")),
         gpu_pod=_gpu_pod(("48Gi", "64Gi")), cacheable=False, mounts_data=True, uses_registry=True),
    Step("export_onnx", pod=_pod("2", ("4Gi", "8Gi")), mounts_data=True),
    Step("challenger_gate", pod=_SMALL),
    # Retried (cluster.default's retries): registration is idempotent (Registry.register's key), so a retry after
    # a crash or an MLflow outage registers nothing twice. Never cached: a cached one would register nothing.
    Step("register_models", cacheable=False, uses_registry=True),
    # A refresh run's canary: a kubectl patch and a registry alias, both idempotent, so retried like registration.
    Step("start_canary", pod=StepSettings(cpu_request="250m", cpu_limit="1", memory_request="1Gi",
                                          memory_limit="2Gi", retries=2), cacheable=False, uses_registry=True),
)

STEPS_BY_NAME = {step.name: step for step in STEPS}
# The training pipeline's steps (relevance.components.steps), the keys of cluster.steps.
PIPELINE_STEPS = tuple(STEPS_BY_NAME)


def require_pipeline_steps(names, where: str | None = None):
    unknown = sorted(set(names) - set(PIPELINE_STEPS))
    if unknown:
        raise ValueError(f"{where + ': ' if where else ''}unknown step(s) {unknown}; expected names from "
                         f"{list(PIPELINE_STEPS)}")
    return names


def declared_step(name: str) -> Step:
    """The declaration of pipeline step ``name``; ValueError for a step nobody declared."""
    require_pipeline_steps([name], "pipeline step")
    return STEPS_BY_NAME[name]


# A list of pipeline step names (pydantic's error names the field it sits in).
StepNames = Annotated[list[str], AfterValidator(require_pipeline_steps)]
