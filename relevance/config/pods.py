"""One pipeline step's pod: Kubernetes quantities, tolerations, what a step asks for (:class:`StepSettings`), the
baseline every step starts from, and how retries are spaced."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from relevance.config.base import Strict

_MEMORY_SUFFIXES = ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki", "E", "P", "T", "G", "M", "K")  # KFP's accepted set


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity as KFP accepts it ("2", "0.5", "500m") in cores; ValueError otherwise."""
    number = quantity[:-1] if quantity.endswith("m") else quantity
    if not (number.isascii() and number.replace(".", "", 1).isdigit()) or float(number) <= 0:
        raise ValueError(f"expected a CPU quantity > 0 such as '2', '0.5' or '500m', got {quantity!r}")
    return float(number) / (1000 if quantity.endswith("m") else 1)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity as KFP accepts it ("512Mi", "4Gi", "1G", "1048576") in bytes."""
    suffix = next((s for s in _MEMORY_SUFFIXES if quantity.endswith(s)), "")
    number = quantity[:len(quantity) - len(suffix)]
    if not (number.isascii() and number.isdigit()) or int(number) <= 0:
        raise ValueError(f"expected a memory quantity > 0: an integer with an optional suffix from "
                         f"{list(_MEMORY_SUFFIXES)}, such as '512Mi' or '4Gi', got {quantity!r}")
    base = 1024 if suffix.endswith("i") else 1000
    return int(number) * base ** (" KMGTPE".index(suffix[:1]) if suffix else 0)


class Toleration(Strict):
    """A Kubernetes toleration: lets a step's pod onto nodes with a matching taint (e.g. a GPU pool's)."""

    key: str | None = None  # None with operator Exists: every taint
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None  # None: every effect
    toleration_seconds: int | None = Field(None, ge=0)  # NoExecute only: how long the pod stays once tainted

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError(f"a toleration with operator Exists matches any value; expected no value, got "
                             f"{self.value!r}")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration with operator Equal needs a key (or use operator: Exists)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(f"toleration_seconds applies to effect NoExecute only, got effect {self.effect}")
        return self


class StepSettings(Strict):
    """One pipeline step's pod: what it asks for, where it may run, how often it is retried.

    In ``cluster.steps.<step>`` a field left out (null) takes its value from ``cluster.default``, and one left
    out there from the baseline (:data:`STEP_BASELINE`)."""

    cpu_request: str | None = None  # Kubernetes quantities: "2", "500m"; "4Gi", "512Mi"
    cpu_limit: str | None = None  # also the step's thread count (RELEVANCE_THREADS): a container sees every core
    memory_request: str | None = None
    memory_limit: str | None = None
    # The device plugin's resource name, which KFP puts in the pod's limits as is. The GPU model is chosen by
    # node_selector (e.g. nvidia.com/gpu.product from GPU feature discovery).
    accelerator_type: Literal["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "google.com/tpu"] | None = None
    accelerator_count: int | None = Field(None, ge=0)
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    # Retries after a failure (a preempted node, an evicted pod), spaced by cluster.backoff. Every step is safe to
    # rerun: each writes its outputs atomically, and registration is idempotent (relevance.platform.registry).
    retries: int | None = Field(None, ge=0, le=10)

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", mode="before")
    @classmethod
    def _quantity(cls, value, info):
        if value is None:
            return None
        value = str(value)  # YAML reads `cpu_request: 4` as an int
        try:
            (cpu_cores if info.field_name.startswith("cpu") else memory_bytes)(value)
        except ValueError as error:
            raise ValueError(f"{info.field_name}: {error}") from None
        return value


STEP_BASELINE = StepSettings(cpu_request="1", memory_request="2Gi", accelerator_count=0, node_selector={},
                             tolerations=[], retries=0)


class RetryBackoff(Strict):
    """How KFP spaces a step's retries (Argo's retryStrategy.backoff)."""

    duration_s: int = Field(30, ge=0)  # before the first retry: time for a preempted node's pods to reschedule
    factor: float = Field(2.0, ge=1)  # each further retry waits this much longer
    max_duration_s: int = Field(3600, gt=0)  # no retry starts later than this after the first attempt
