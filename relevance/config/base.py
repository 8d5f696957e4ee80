"""What every config section shares: unknown keys are errors (a typo never silently falls back to a default), and an
assignment is validated like a value read from a file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # DNS-1123 label: the names of most Kubernetes objects


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
