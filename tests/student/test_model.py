"""The student: the distillation loss, training on soft labels, save and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relevance.config import StudentConfig
from relevance.student.model import Student, distillation_loss, train_student


def test_distillation_loss_is_kl_and_zero_at_the_teacher():
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    assert distillation_loss(torch.log(teacher), teacher).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    kl = float((teacher * torch.log(teacher / (1 / 3))).sum())
    assert distillation_loss(logits, teacher).item() == pytest.approx(kl, rel=1e-5)
    # T²-scaled KL on softened distributions; the CE term only counts rows with a human grade.
    assert distillation_loss(logits, teacher, temperature=2.0).item() > 0
    with_ce = distillation_loss(logits, teacher, human_grades=torch.tensor([0]), ce_weight=1.0).item()
    assert with_ce == pytest.approx(kl + np.log(3), rel=1e-5)
    assert distillation_loss(logits, teacher, human_grades=torch.tensor([-1]), ce_weight=1.0).item() == \
        pytest.approx(kl, rel=1e-5)


def test_student_learns_soft_labels_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    logits = x[:, :3] * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    grades = probs.argmax(1)
    config = StudentConfig(hidden=[16], epochs=30, batch_size=64, learning_rate=1e-2)
    model, metrics = train_student(x[:500], probs[:500], x[500:], grades[500:], 3, config, log=lambda _: None)
    assert metrics["best"]["valid_accuracy"] > 0.8
    student = Student(model, {"kind": "student", "num_grades": 3, "num_features": 6, "config": config.model_dump()})
    loaded = Student.load(student.save(tmp_path / "s"))
    np.testing.assert_allclose(loaded.predict_proba(x[:5]), student.predict_proba(x[:5]), atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \[N, 6\]"):
        loaded.predict_proba(x[:5, :4])
    with pytest.raises(ValueError, match="K=4"):
        train_student(x, probs, x, grades, 4, config)
    with pytest.raises(ValueError, match="non-empty"):
        train_student(x[:0], probs[:0], x, grades, 3, config)


def test_a_feature_constant_in_training_is_not_blown_up_at_serving():
    """A feature that never varies in the statistics sample is standardised with std 1, not ~0: another value at
    serving time (a new item with a lexical feature training never saw move) must stay a finite, modest input."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    x[:, 3] = 0.25  # constant in training
    probs = np.full((400, 3), 1 / 3, np.float32)
    config = StudentConfig(hidden=[8], epochs=1, batch_size=64)
    model, _ = train_student(x[:300], probs[:300], x[300:], probs[300:].argmax(1), 3, config, log=lambda _: None)
    assert model.feature_std[3].item() == pytest.approx(1.0)
    assert model.feature_std[0].item() == pytest.approx(float(x[:300, 0].std(ddof=1)), rel=1e-3)
    shifted = torch.from_numpy(x[:5].copy())
    shifted[:, 3] = 1.25
    standardised = (shifted - model.feature_mean) / model.feature_std
    assert standardised[:, 3].abs().max().item() == pytest.approx(1.0, abs=1e-5)
