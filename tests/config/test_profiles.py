"""Profiles: typed and validated where they are defined, their pods from the step declarations, merged key by key
under a run's file; ``--profile`` beats the file's ``profile`` key."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from relevance.config import RunConfig, build_config, load_config, read_overrides
from relevance.config.cluster import ClusterConfig
from relevance.config.pods import StepSettings
from relevance.config.profiles import PROFILES, Profile
from relevance.config.steps import STEPS

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_every_profile_is_typed_down_to_its_pods():
    assert set(PROFILES) == set(get_args(RunConfig.model_fields["profile"].annotation))
    for name, profile in PROFILES.items():
        assert isinstance(profile, Profile), name
        assert isinstance(profile.cluster, ClusterConfig), name
        assert isinstance(profile.cluster.default, StepSettings), name
        assert profile.cluster.steps and all(isinstance(pod, StepSettings) for pod in profile.cluster.steps.values())


def test_a_profile_with_an_impossible_value_is_refused_where_it_is_defined():
    with pytest.raises(ValidationError, match="cpu_request: expected a CPU quantity"):
        Profile(cluster={"steps": {"label_shard": {"cpu_request": "lots"}}})
    with pytest.raises(ValidationError, match=r"unknown step\(s\) \['label_shards'\]"):
        Profile(cluster={"steps": {"label_shards": {}}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        Profile(teacher={"epoch": 3})


def test_a_profile_sets_only_what_it_names():
    gpu = PROFILES["gpu"].settings()
    assert set(gpu) == {"workdir", "teacher", "labeling", "cluster"}
    assert gpu["teacher"] == {"pooling": "last", "finetune": "lora", "gradient_checkpointing": True,
                              "precision": "bf16", "batch_size": 16, "learning_rate": 2e-4, "lora_r": 16,
                              "lora_alpha": 32}
    assert PROFILES["quick"].settings()["labeling"] == {"shard_rows": 3200}
    assert set(PROFILES["default"].settings()) == {"cluster"}
    assert set(PROFILES["default"].settings()["cluster"]) == {"default", "steps"}


def test_the_pods_are_the_declared_ones():
    for profile in PROFILES:
        cluster = build_config(profile).cluster
        for step in STEPS:
            pod = step.gpu_pod if profile == "gpu" and step.gpu_pod else step.pod
            resolved = cluster.step(step.name)
            for field in pod.model_fields_set if pod else ():
                assert getattr(resolved, field) == getattr(pod, field), (profile, step.name, field)
    gpu, cpu = build_config("gpu").cluster, build_config("default").cluster
    assert {s.name for s in STEPS if gpu.step(s.name).accelerator_count} == {s.name for s in STEPS if s.gpu_pod}
    assert not any(cpu.step(s.name).accelerator_count for s in STEPS)


def test_profiles_and_overrides(tmp_path):
    quick = build_config("quick")
    assert quick.teacher.finetune == "full" and quick.workdir == "runs/quick"
    assert build_config("gpu").teacher.pooling == "last"
    path = tmp_path / "c.yaml"
    path.write_text("profile: quick\nteacher:\n  epochs: 7\n")
    loaded = load_config(path)
    assert loaded.teacher.epochs == 7 and loaded.teacher.batch_size == 16 and loaded.profile == "quick"
    assert load_config(path, profile="gpu").teacher.batch_size == 16 and load_config(path, "gpu").profile == "gpu"
    with pytest.raises(ValueError, match="unknown profile"):
        build_config("huge")


def test_a_file_overrides_a_profile_key_by_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("profile: gpu\ncluster:\n  steps:\n    label_shard:\n      memory_limit: 80Gi\n")
    config = load_config(path)
    label = config.cluster.step("label_shard")
    assert (label.memory_limit, label.memory_request, label.accelerator_type) == ("80Gi", "48Gi", "nvidia.com/gpu")
    assert config.cluster.labeling.pairs_per_s_per_device == 169.0  # the rest of the profile's section stays
    assert config.cluster.data_volume.claim_name == "relevance-data"


def _assert_kept(expected, actual, where="") -> None:
    if isinstance(expected, dict):
        for key, value in expected.items():
            _assert_kept(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for index, (value, kept) in enumerate(zip(expected, actual)):
            _assert_kept(value, kept, f"{where}[{index}]")
    else:
        assert actual == expected, where


@pytest.mark.parametrize("profile", [None, *PROFILES])
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_under_every_profile_keeping_every_value(path, profile):
    """What ``relevance <command> -c path [-p profile]`` loads: the file's values over the profile's, none lost."""
    file_profile, overrides = read_overrides(path)
    config = load_config(path, profile)
    assert config.profile == (profile or file_profile or "default")
    dumped = config.model_dump()
    _assert_kept(overrides, dumped)
    profile_only = {section: {k: v for k, v in values.items() if k not in overrides.get(section, {})}
                    if isinstance(values, dict) else values
                    for section, values in PROFILES[config.profile].settings().items() if section != "workdir"}
    _assert_kept(profile_only, dumped)
