"""GBDT baselines: multiclass, LambdaMART and distilled trees learn what the features say, calibrate on valid,
and round-trip through save and load."""

from __future__ import annotations

import numpy as np
import pytest

from relevance.config import GBDTConfig
from relevance.gbdt import GBDT, train_gbdt

CONFIG = GBDTConfig(learning_rate=0.1, num_leaves=8, min_child_samples=5, max_rounds=200, early_stopping_rounds=20)


def _data(rows: int, seed: int):
    """Grade = quartile of feature 0, with one noisy feature and one useless one; 25 items per query."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    grades = np.digitize(x[:, 0] + 0.1 * rng.normal(size=rows), [-0.7, 0.0, 0.7])
    queries = np.repeat(np.arange(rows // 25), 25).astype(str)
    return x, grades, queries


def test_multiclass_learns_calibrates_and_round_trips(tmp_path):
    x, y, _ = _data(2000, 0)
    vx, vy, _ = _data(500, 1)
    model = train_gbdt("multiclass", x, y, vx, vy, 4, CONFIG, {"note": "test"}, log=lambda _: None)
    probs = model.predict_proba(vx)
    assert probs.shape == (500, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == vy).mean() > 0.85
    assert model.manifest["calibration"]["method"] == "temperature" and model.manifest["note"] == "test"
    loaded = GBDT.load(model.save(tmp_path / "gbdt"))
    np.testing.assert_allclose(loaded.predict_proba(vx), probs, rtol=1e-5)
    assert loaded.manifest["gbdt_version"].startswith("gbdt-")
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        loaded.predict_proba(vx[:, :2])


def test_lambdamart_ranks_by_grade_and_reads_out_probabilities():
    x, y, q = _data(2000, 0)
    vx, vy, vq = _data(500, 1)
    model = train_gbdt("lambdamart", x, y, vx, vy, 4, CONFIG, {}, train_queries=q, valid_queries=vq,
                       train_grades=y, log=lambda _: None)
    scores = model.scores(vx)
    assert np.corrcoef(scores, vx[:, 0])[0, 1] > 0.9  # ranks by the feature that decides the grade
    probs = model.predict_proba(vx)
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs.argmax(1) == vy).mean() > 0.6
    with pytest.raises(ValueError, match="query ids"):
        train_gbdt("lambdamart", x, y, vx, vy, 4, CONFIG, {}, log=lambda _: None)


def test_distilled_trees_follow_soft_labels():
    x, _, _ = _data(3000, 0)
    vx, vy, _ = _data(500, 1)
    logits = np.stack([-2 * x[:, 0], -x[:, 0], x[:, 0], 2 * x[:, 0]], 1)
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    model = train_gbdt("distilled", x, soft, vx, vy, 4, CONFIG.model_copy(update={"calibration": "none"}), {},
                       log=lambda _: None)
    probs = model.predict_proba(x[:500])
    kl = np.sum(soft[:500] * np.log(soft[:500] / np.clip(probs, 1e-9, 1)), 1).mean()
    assert kl < 0.05
    with pytest.raises(ValueError, match=r"teacher probabilities \[N, 4\]"):
        train_gbdt("distilled", x, soft[:, :3], vx, vy, 4, CONFIG, {}, log=lambda _: None)
