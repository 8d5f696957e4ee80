"""relevance.common.resources: shipped files are found from a checkout (and from a wheel: tests/test_packaging.py)."""

from __future__ import annotations

import pytest

from relevance.common.resources import packaged


@pytest.mark.parametrize("name, expected", [("feature_repo", "feature_store.yaml"), ("kserve", "base"),
                                            ("trainer", "trainjob.yaml")])
def test_packaged_resources_are_found(name, expected):
    assert (packaged(name) / expected).exists()


def test_an_unknown_resource_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown packaged resource 'nope'"):
        packaged("nope")
