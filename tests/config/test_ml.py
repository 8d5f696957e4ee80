"""The machine-learning sections: what they refuse, and which section holds the labelling job's settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relevance.config import build_config
from relevance.config.ml import DEFAULT_BACKBONE, DataConfig, PoolLabellingConfig, TextConfig


def test_text_config_rejects_unknown_fields_and_impossible_lengths():
    with pytest.raises(ValidationError, match="subset"):
        TextConfig(fields=["title", "price"])
    with pytest.raises(ValidationError, match="unknown field"):
        TextConfig(field_token_budgets={"titel": 48})
    with pytest.raises(ValidationError, match="must exceed max_query_tokens"):
        TextConfig(max_length=16, max_query_tokens=24)


def test_a_real_source_needs_a_path_and_typos_are_errors():
    assert DataConfig().source == "synthetic"
    with pytest.raises(ValidationError, match="data.path is required"):
        build_config("default", {"data": {"source": "homedepot"}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        build_config("default", {"student": {"hiden": [4]}})


def test_the_labeling_section_is_the_labelling_jobs_settings():
    """``labeling`` (how the teacher labels the pool on one machine) is PoolLabellingConfig; the pipeline's fan-out
    plan (``cluster.labeling``) is another class."""
    config = build_config("gpu", {"labeling": {"shard_rows": 1000}})
    assert isinstance(config.labeling, PoolLabellingConfig)
    assert (config.labeling.shard_rows, config.labeling.batch_size, config.labeling.precision) == (1000, 256, "bf16")
    assert not isinstance(config.cluster.labeling, PoolLabellingConfig)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PoolLabellingConfig(batch_size=0)


def test_teacher_and_student_start_from_the_shipped_backbone():
    config = build_config("default")
    assert config.teacher.backbone == config.student.encoder == DEFAULT_BACKBONE
