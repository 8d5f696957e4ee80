"""What every config section shares: unknown keys and bad assignments are errors, never silently kept."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from relevance.config.base import K8S_NAME, Strict


class _Section(Strict):
    size: int = 1


def test_a_typo_is_an_error_and_an_assignment_is_validated():
    with pytest.raises(ValidationError, match="Extra inputs"):
        _Section(sise=2)
    section = _Section()
    with pytest.raises(ValidationError):
        section.size = "many"


@pytest.mark.parametrize("name, valid", [("relevance", True), ("relevance-teacher-2", True), ("a", True),
                                         ("Relevance", False), ("-relevance", False), ("relevance-", False),
                                         ("rel.evance", False), ("", False)])
def test_kubernetes_names(name, valid):
    assert bool(re.match(K8S_NAME, name)) is valid
