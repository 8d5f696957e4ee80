"""Canary fixtures: the shipped overlays rendered once, and a registry with a champion and two candidates."""

from __future__ import annotations

import json

import pytest
from relevance.serving.canary.manifests import OVERLAYS, overlay_dir, render

from relevance.config import RunConfig


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(overlay_dir(overlay)) for overlay in OVERLAYS}


@pytest.fixture()
def registry_config(tmp_path):
    """A registry with champion v1 and two more versions (v3 computes other features)."""
    from relevance.platform.registry import CHAMPION, Registry

    config = RunConfig(workdir=str(tmp_path / "run"),
                       registry={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    registry = Registry(config.registry)
    for version, feature_version in ((1, "3"), (2, "3"), (3, "4")):
        model = tmp_path / f"student-{version}"
        model.mkdir()
        (model / "manifest.json").write_text(json.dumps({"kind": "student"}))
        registry.register(config.registry.student_name, model, {}, {"accuracy": 0.5},
                          {"feature_version": feature_version},
                          alias=CHAMPION if version == 1 else None)
    return config, registry
