"""The one typed config: profiles, overrides from a file, and refusals of what cannot work."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError

from relevance.config import TextConfig, build_config, load_config


def test_text_config_rejects_unknown_fields_and_impossible_lengths():
    with pytest.raises(ValidationError, match="subset"):
        TextConfig(fields=["title", "price"])
    with pytest.raises(ValidationError, match="unknown field"):
        TextConfig(field_token_budgets={"titel": 48})
    with pytest.raises(ValidationError, match="must exceed max_query_tokens"):
        TextConfig(max_length=16, max_query_tokens=24)


def test_profiles_and_overrides(tmp_path):
    quick = build_config("quick")
    assert quick.teacher.finetune == "full" and quick.workdir == "runs/quick"
    assert build_config("gpu").teacher.pooling == "last"
    path = tmp_path / "c.yaml"
    path.write_text("profile: quick\nteacher:\n  epochs: 7\n")
    loaded = load_config(path)
    assert loaded.teacher.epochs == 7 and loaded.teacher.batch_size == 16 and loaded.profile == "quick"
    with pytest.raises(ValueError, match="unknown profile"):
        build_config("huge")
    with pytest.raises(ValidationError, match="data.path is required"):
        build_config("default", {"data": {"source": "homedepot"}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        build_config("default", {"student": {"hiden": [4]}})


def test_a_query_in_two_splits_is_rejected():
    from relevance.data.schema import DataContractError, validate_judgments

    judgments = pd.DataFrame({"query_id": ["q1", "q1"], "item_id": ["a", "b"], "grade": [1, 0],
                              "split": ["train", "test"]})
    with pytest.raises(DataContractError, match="more than one split"):
        validate_judgments(judgments, 3)
