"""One typed configuration for every step of the chain.

A run is described by a single YAML (or JSON) file that maps onto :class:`RunConfig`. Profiles give sensible
starting points: ``quick`` (tiny, for tests and the demo), ``default`` (MiniLM-L6 on CPU) and ``gpu``
(a large decoder teacher with bf16 and LoRA). Values in the file override the profile; unknown keys are errors,
so a typo never silently falls back to a default.

The sections live in parts: ml (data, text, candidates, teacher, labelling, student, GBDT, evaluation), cluster (the
teacher's processes and nodes, the pipeline's pods), pods (one pod's settings), steps (the pipeline's steps, declared
once), serving (serving and canary), platform (validation, Feast, MLflow) and profiles. Every name is importable from
here, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from relevance.config.base import K8S_NAME, Strict
from relevance.config.cluster import (
    ClusterConfig,
    DataVolume,
    DistributedConfig,
    LabelFanOutConfig,
    SecretEnv,
    TrainJobConfig,
)
from relevance.config.ml import (
    DEFAULT_BACKBONE,
    CandidateConfig,
    DataConfig,
    EvalConfig,
    GBDTConfig,
    LambdaMARTConfig,
    PoolLabellingConfig,
    StudentConfig,
    TeacherConfig,
    TextConfig,
)
from relevance.config.platform import FeatureStoreConfig, RegistryConfig, ValidationConfig
from relevance.config.pods import STEP_BASELINE, RetryBackoff, StepSettings, Toleration, cpu_cores, memory_bytes
from relevance.config.profiles import PROFILES, Profile
from relevance.config.serving import CanaryConfig, MonitorConfig, ServingConfig
from relevance.config.steps import (
    PIPELINE_STEPS,
    STEPS,
    Step,
    StepNames,
    declared_step,
    require_pipeline_steps,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "K8S_NAME",
    "PIPELINE_STEPS",
    "PROFILES",
    "STEPS",
    "STEP_BASELINE",
    "CanaryConfig",
    "MonitorConfig",
    "CandidateConfig",
    "ClusterConfig",
    "DataConfig",
    "DataVolume",
    "DistributedConfig",
    "EvalConfig",
    "FeatureStoreConfig",
    "GBDTConfig",
    "LabelFanOutConfig",
    "LambdaMARTConfig",
    "PoolLabellingConfig",
    "Profile",
    "RegistryConfig",
    "RetryBackoff",
    "RunConfig",
    "SecretEnv",
    "ServingConfig",
    "Step",
    "StepNames",
    "StepSettings",
    "Strict",
    "StudentConfig",
    "TeacherConfig",
    "TextConfig",
    "Toleration",
    "TrainJobConfig",
    "ValidationConfig",
    "build_config",
    "cpu_cores",
    "declared_step",
    "load_config",
    "memory_bytes",
    "read_overrides",
    "read_run_config",
    "require_pipeline_settings",
    "require_pipeline_steps",
]


class RunConfig(Strict):
    """The whole chain: data → teacher → candidates → labels → student → evaluation."""

    profile: Literal["quick", "default", "gpu"] = "default"  # the keys of PROFILES
    workdir: str = "runs/default"
    data: DataConfig = Field(default_factory=DataConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    labeling: PoolLabellingConfig = Field(default_factory=PoolLabellingConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    gbdt: GBDTConfig = Field(default_factory=GBDTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    features: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)  # the compiled pipeline's pods

    @model_validator(mode="after")
    def _teacher_pod_fits_its_launcher(self) -> RunConfig:
        # The teacher step's pod either trains (one process per GPU it asks for) or, with a TrainJob, only
        # submits and waits: GPUs asked for there would sit idle for the whole fine-tune.
        distributed, pod = self.teacher.distributed, self.cluster.step("finetune_teacher")
        gpus = pod.accelerator_count if pod.accelerator_type else 0
        if distributed.launcher == "trainjob" and gpus:
            raise ValueError(f"teacher.distributed.launcher is trainjob, so the finetune_teacher pod only submits "
                             f"the job: expected no accelerator in cluster.steps.finetune_teacher, got {gpus} "
                             f"{pod.accelerator_type}")
        if distributed.launcher == "local" and gpus and gpus != distributed.nproc_per_node:
            raise ValueError(f"the finetune_teacher pod asks for {gpus} {pod.accelerator_type} but "
                             f"teacher.distributed.nproc_per_node is {distributed.nproc_per_node}: expected one "
                             "process per GPU")
        return self

def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(profile: str = "default", overrides: dict | None = None) -> RunConfig:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    values = _deep_merge(PROFILES[profile].settings(), overrides or {})
    values["profile"] = profile
    return RunConfig.model_validate(values)


def require_pipeline_settings(config: RunConfig) -> RunConfig:
    """Refuse what the one-machine chain does and the KFP pipeline has no step for, before any step runs."""
    if config.student.towers.enabled:
        raise ValueError("student.towers.enabled: tuning the towers is a step of `relevance run` only, the pipeline "
                         "has no towers step; tune them with `relevance distil-towers` and name the output (a path "
                         "the pods can read) as student.encoder")
    if config.student.query_tower.enabled:
        raise ValueError("student.query_tower.enabled: distilling a query tower is a step of `relevance run` only, "
                         "the pipeline has no query-tower step; distil it with `relevance distil-query-tower` and "
                         "name the output (a path the pods can read) as student.query_encoder")
    return config


def read_overrides(path: str | Path | None) -> tuple[str | None, dict]:
    """A run config file as (its ``profile`` key, the rest): the overrides applied over that profile."""
    if path is None:
        return None, {}
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    overrides = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(overrides).__name__}")
    return overrides.pop("profile", None), overrides


def load_config(path: str | Path | None = None, profile: str | None = None) -> RunConfig:
    """Load a run config file; its ``profile`` key (or the ``profile`` argument) picks the base profile."""
    file_profile, overrides = read_overrides(path)
    return build_config(profile or file_profile or "default", overrides)


def read_run_config(path: str | Path) -> RunConfig:
    """A resolved run config, as a pipeline step reads it: the JSON ``resolve_config`` wrote (every value, no
    profile to merge)."""
    return RunConfig.model_validate_json(Path(path).read_text())
