"""Ensembles: the log-linear pool, weights fitted on valid, and a saved ensemble that refuses changed members."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relevance.teacher.ensemble import Ensemble, combine, fit_weights


def test_weights_favour_the_informative_member():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 3, 5000)
    good = np.full((5000, 3), 0.15)
    good[np.arange(5000), grades] = 0.7
    noise = rng.dirichlet(np.ones(3), 5000)
    weights = fit_weights([good, noise], grades)
    assert weights[0] > 0.8 and weights[1] < 0.1
    combined = combine([good, noise], weights)
    assert np.allclose(combined.sum(1), 1, atol=1e-5) and (combined.argmax(1) == grades).mean() > 0.95
    np.testing.assert_allclose(combine([good], [1.0]), good, rtol=1e-5)
    with pytest.raises(ValueError, match="one weight per member"):
        combine([good, noise], [1.0])


def test_saved_ensemble_refuses_a_changed_member(tmp_path):
    for name, version in (("teacher", "teacher-aaa"), ("gbdt", "gbdt-bbb")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"kind": name, "num_grades": 3,
                                                                   f"{name}_version": version}))
    Ensemble.create(tmp_path / "labeller", [tmp_path / "teacher", tmp_path / "gbdt"], [0.7, 0.4])
    loaded = Ensemble.load(tmp_path / "labeller")
    assert loaded.weights == [0.7, 0.4] and loaded.member_dirs[1] == (tmp_path / "gbdt").resolve()
    (tmp_path / "gbdt" / "manifest.json").write_text(json.dumps({"kind": "gbdt", "num_grades": 3,
                                                                 "gbdt_version": "gbdt-ccc"}))
    with pytest.raises(ValueError, match="refit the ensemble"):
        Ensemble.load(tmp_path / "labeller")
