"""One pod's settings: Kubernetes quantities as KFP accepts them, tolerations, and numbers read from YAML."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relevance.config.pods import STEP_BASELINE, StepSettings, Toleration, cpu_cores, memory_bytes


@pytest.mark.parametrize("quantity, cores", [("2", 2.0), ("0.5", 0.5), ("500m", 0.5), ("250m", 0.25)])
def test_cpu_quantities(quantity, cores):
    assert cpu_cores(quantity) == cores


@pytest.mark.parametrize("quantity, size", [("512Mi", 512 * 2**20), ("4Gi", 4 * 2**30), ("1G", 10**9),
                                            ("1048576", 2**20)])
def test_memory_quantities(quantity, size):
    assert memory_bytes(quantity) == size


@pytest.mark.parametrize("quantity", ["", "0", "-1", "two", "1.5Gi", "4GB"])
def test_memory_kfp_would_refuse_is_refused(quantity):
    with pytest.raises(ValueError, match="expected a memory quantity"):
        memory_bytes(quantity)


@pytest.mark.parametrize("quantity", ["", "0", "-1", "two", "2 cores", "0m"])
def test_cpu_kfp_would_refuse_is_refused(quantity):
    with pytest.raises(ValueError, match="expected a CPU quantity"):
        cpu_cores(quantity)


def test_a_yaml_number_is_a_quantity_and_a_bad_one_names_its_field():
    assert StepSettings.model_validate({"cpu_request": 4, "memory_request": 1048576}).cpu_request == "4"
    with pytest.raises(ValidationError, match="memory_limit: expected a memory quantity"):
        StepSettings(memory_limit="lots")


def test_tolerations_that_cannot_match_are_refused():
    Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    with pytest.raises(ValidationError, match="matches any value"):
        Toleration(key="k", operator="Exists", value="v")
    with pytest.raises(ValidationError, match="needs a key"):
        Toleration(operator="Equal", value="v")
    with pytest.raises(ValidationError, match="NoExecute only"):
        Toleration(key="k", value="v", effect="NoSchedule", toleration_seconds=5)


def test_the_baseline_sets_what_every_pod_needs():
    assert None not in (STEP_BASELINE.cpu_request, STEP_BASELINE.memory_request, STEP_BASELINE.retries)
    assert STEP_BASELINE.retries == 0 and STEP_BASELINE.accelerator_count == 0
