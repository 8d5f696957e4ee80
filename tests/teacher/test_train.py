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
    from relevance.teacher.targets import grade_targets

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


class Killed(Exception):
    pass


def test_a_killed_teacher_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tiny_pairs, tiny_bert, tmp_path,
                                                                                       monkeypatch):
    """Killed mid-epoch after a checkpoint (written after the step-4 and step-8 evaluations), the teacher resumes
    with the weights, optimiser, schedule, shuffle and dropout state it had, and ends bit for bit where one that
    was never killed does; a checkpoint of other settings is not resumed from."""
    import torch

    from relevance.models import distributed

    items, queries, judgments = tiny_pairs()  # 48 pairs: 6 batches of 8 per epoch, 18 steps
    config = TeacherConfig(backbone=str(tiny_bert), finetune="full", epochs=3, batch_size=8, learning_rate=1e-3,
                           head_hidden=16, precision="fp32", eval_every_steps=4, early_stopping_patience=10)
    text, query_text = TextConfig(fields=["title"], max_length=32), queries.set_index("query_id")["query"]

    def fit(path, log=lambda _: None, settings=config):
        return train_teacher(judgments, judgments, query_text, items, 3, settings, text, data_hash="a", log=log,
                             checkpoint=path)

    whole = fit(tmp_path / "whole.pt")

    def fault(ctx, step):
        if step == 10:  # epoch 2's 4th batch: the last checkpoint is the one after step 8's evaluation
            raise Killed

    monkeypatch.setattr(distributed, "inject_fault", fault)
    with pytest.raises(Killed):
        fit(tmp_path / "killed.pt")
    monkeypatch.undo()
    saved = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert (saved["state"]["step"], saved["state"]["epoch"], saved["state"]["batch"]) == (8, 1, 2)
    logs = []
    resumed = fit(tmp_path / "killed.pt", logs.append)
    assert any("resuming from" in line and "epoch 2, batch 2" in line for line in logs), logs
    assert resumed.manifest["metrics"]["history"] == whole.manifest["metrics"]["history"]
    assert [h["step"] for h in whole.manifest["metrics"]["history"]] == [4, 8, 12, 16, 18]
    expected, got = whole.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    logs = []
    fit(tmp_path / "killed.pt", logs.append, config.model_copy(update={"learning_rate": 2e-3}))
    assert any("starting afresh" in line for line in logs) and not any("resuming" in line for line in logs)
