"""The platform sections: the data gate's thresholds, the Feast repo, the registry's gate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relevance.config import load_config
from relevance.config.platform import FeatureStoreConfig, RegistryConfig, ValidationConfig


def test_gate_thresholds_are_bounded():
    with pytest.raises(ValidationError):
        ValidationConfig(max_grade_drift=0)  # nothing would pass
    with pytest.raises(ValidationError):
        RegistryConfig(min_ndcg=1.5)
    assert FeatureStoreConfig().repo is None  # the definitions shipped with the package


def test_platform_sections_load_from_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("registry:\n  min_ndcg: 0.85\n  student_name: shop-student\nvalidation:\n  reference: runs/x/data\n"
                    "features:\n  repo: /repo\n")
    config = load_config(path)
    assert (config.registry.min_ndcg, config.registry.student_name, config.registry.teacher_name) == \
        (0.85, "shop-student", "relevance-teacher")
    assert (config.validation.reference, config.features.repo) == ("runs/x/data", "/repo")
