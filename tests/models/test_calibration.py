"""Calibration: temperature scaling recovers a known temperature and keeps the argmax, vector scaling fixes a
per-grade bias, and the calibration errors match hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from relevance.models.calibration import (
    Calibrator,
    ece_classwise,
    ece_top_label,
    fit_calibrator,
    negative_log_likelihood,
    reliability_curve,
)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture()
def overconfident():
    """Grades drawn from softmax(z); a model that reports softmax(3z), three times too sharp."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.0, size=(20000, 5))
    grades = np.array([rng.choice(5, p=p) for p in _softmax(z)])
    return _softmax(3 * z), grades


def test_temperature_scaling_recovers_the_temperature_and_keeps_the_argmax(overconfident):
    probs, grades = overconfident
    calibrator = fit_calibrator(probs, grades, "temperature")
    assert calibrator.temperature == pytest.approx(3.0, rel=0.05)
    calibrated = calibrator.apply(probs)
    assert (calibrated.argmax(1) == probs.argmax(1)).all()
    assert negative_log_likelihood(calibrated, grades) < negative_log_likelihood(probs, grades)
    assert ece_top_label(calibrated, grades) < 0.3 * ece_top_label(probs, grades)
    fitted = calibrator.fitted_on
    assert fitted["nll_after"] < fitted["nll_before"] and fitted["ece_top_after"] < fitted["ece_top_before"]
    again = Calibrator.from_dict(calibrator.to_dict(), 5)
    np.testing.assert_allclose(again.apply(probs), calibrated, rtol=1e-6)


def test_vector_scaling_fixes_a_per_grade_bias():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.0, size=(20000, 4))
    grades = np.array([rng.choice(4, p=p) for p in _softmax(z)])
    biased = _softmax(z + np.array([1.5, 0.0, 0.0, -1.0]))  # grade 0 over-predicted, grade 3 under-predicted
    temperature = fit_calibrator(biased, grades, "temperature").apply(biased)
    vector = fit_calibrator(biased, grades, "vector")
    assert negative_log_likelihood(vector.apply(biased), grades) < negative_log_likelihood(temperature, grades) - 0.02
    assert vector.bias[0] < vector.bias[3]


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    grades = np.array([0, 1, 0, 0])
    # top label: bin 0.9 → confidence 0.9, accuracy 0.5; bin 0.6 → confidence 0.6, accuracy 1.0
    assert ece_top_label(probs, grades) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    # classwise: grade 0 as above; grade 1 with p 0.1 (hit 0.5) and 0.4 (hit 0.0)
    assert ece_classwise(probs, grades) == pytest.approx((0.4 + (0.5 * 0.4 + 0.5 * 0.4)) / 2)
    curve = reliability_curve(probs, grades)
    assert curve["count"] == [2, 2] and curve["accuracy"] == [1.0, 0.5]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="expected one of"):
        fit_calibrator(np.full((3, 2), 0.5), np.array([0, 1, 0]), "platt")
    with pytest.raises(ValueError, match=r"grades must lie in 0..1"):
        fit_calibrator(np.full((3, 2), 0.5), np.array([0, 2, 0]), "temperature")
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        Calibrator("temperature", [1.0] * 3, [0.0] * 3).apply(np.full((2, 5), 0.2))
    assert Calibrator.identity(3).apply(np.full((2, 3), 1 / 3)).shape == (2, 3)
