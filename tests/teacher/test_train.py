"""relevance.teacher.train: targets and the settings fine-tuning refuses (the whole train → save → load round trip
is in test_model)."""

import numpy as np
import pandas as pd
import pytest

from relevance.config import TeacherConfig, TextConfig
from relevance.teacher.train import train_teacher


def test_qlora_without_cuda_is_a_clear_error(tiny_pairs, tiny_bert):
    items, queries, judgments = tiny_pairs()
    config = TeacherConfig(backbone=str(tiny_bert), finetune="qlora")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        train_teacher(judgments, judgments, queries.set_index("query_id")["query"], items, 3, config,
                      TextConfig(fields=["title"]), log=lambda _: None)


def test_raw_score_targets_are_two_hot_on_the_grade_axis():
    from relevance.teacher.train import grade_targets

    frame = pd.DataFrame({"grade": [0, 1, 1, 2, 3, 4, 2], "raw_score": [1.0, 4 / 3, 5 / 3, 2.0, 7 / 3, 3.0, np.nan]})
    targets = grade_targets(frame, 5, "raw_scores", (1.0, 3.0))
    np.testing.assert_allclose(targets.sum(1), 1.0)
    expected_grade = targets @ np.arange(5)
    np.testing.assert_allclose(expected_grade[:6], 2 * (frame["raw_score"][:6] - 1), atol=1e-6)  # exactly g*
    assert (targets.argmax(1) == frame["grade"]).all()  # the argmax is still the binned grade
    np.testing.assert_allclose(targets[6], np.eye(5)[2])  # no raw score: the grade, one-hot
    np.testing.assert_allclose(grade_targets(frame, 5), np.eye(5)[frame["grade"]])
    with pytest.raises(ValueError, match="raw_score"):
        grade_targets(frame.drop(columns="raw_score"), 5, "raw_scores", (1.0, 3.0))
