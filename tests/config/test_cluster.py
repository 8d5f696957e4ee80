"""The cluster section: a step's pod layered over ``default`` and the baseline, what a registration may not inherit,
the labelling fan-out's two classes of settings, and the teacher's launcher."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relevance.config import build_config
from relevance.config.cluster import ClusterConfig, DistributedConfig, LabelFanOutConfig
from relevance.config.pods import STEP_BASELINE


def test_a_step_takes_its_own_then_defaults_then_the_baseline_field_by_field():
    cluster = ClusterConfig(default={"cpu_request": "2", "retries": 2},
                            steps={"label_shard": {"cpu_request": "4", "memory_limit": "8Gi"}})
    label = cluster.step("label_shard")
    assert (label.cpu_request, label.memory_limit, label.retries) == ("4", "8Gi", 2)
    assert label.memory_request == STEP_BASELINE.memory_request
    assert cluster.step("build_pool").cpu_request == "2"
    with pytest.raises(ValueError, match="unknown pipeline step 'labelling'"):
        cluster.step("labelling")


def test_registration_is_retried_like_any_step_since_it_is_idempotent():
    assert ClusterConfig(default={"retries": 3}).step("register_models").retries == 3
    assert ClusterConfig(steps={"register_models": {"retries": 1}}).step("register_models").retries == 1


def test_the_fan_out_plan_is_its_own_class_with_time_for_a_shard():
    config = build_config("quick")
    assert isinstance(config.cluster.labeling, LabelFanOutConfig)
    assert config.cluster.labeling.max_devices == 2
    with pytest.raises(ValidationError, match="must exceed shard_overhead_s"):
        LabelFanOutConfig(shard_overhead_s=600.0, max_shard_s=600.0)


def test_several_nodes_need_a_trainjob_and_a_trainjob_pod_asks_for_no_gpu():
    with pytest.raises(ValidationError, match="needs launcher: trainjob"):
        DistributedConfig(num_nodes=2)
    DistributedConfig(num_nodes=2, launcher="trainjob")
    with pytest.raises(ValidationError, match="only submits the job"):
        build_config("gpu", {"teacher": {"distributed": {"launcher": "trainjob"}}})
    with pytest.raises(ValidationError, match="expected one process per GPU"):
        build_config("gpu", {"teacher": {"distributed": {"nproc_per_node": 2}}})
