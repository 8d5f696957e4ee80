"""GBDT baselines: multiclass, LambdaMART and distilled trees learn what the features say, calibrate on valid,
and round-trip through save and load."""

from __future__ import annotations

import numpy as np
import pytest

from relevance.config import GBDTConfig, LambdaMARTConfig
from relevance.student.gbdt import GBDT, train_gbdt

# Small, clean data: fast settings for every objective (LambdaMART has its own).
CONFIG = GBDTConfig(learning_rate=0.1, num_leaves=8, min_child_samples=5, max_rounds=200, early_stopping_rounds=20,
                    lambdamart=LambdaMARTConfig(learning_rate=0.1, num_leaves=8, min_child_samples=5,
                                                early_stopping_rounds=20))


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


def _short_lists(queries: int, seed: int):
    """Home Depot's shape: ~6 judged items per query, grades 0..4 from a noisy mix of two features, plus a
    BM25-like feature (feature 0) that alone ranks fairly well, and eight useless ones."""
    rng = np.random.default_rng(seed)
    rows = queries * 6
    x = rng.normal(size=(rows, 10)).astype(np.float32)
    signal = 0.8 * x[:, 0] + 0.6 * x[:, 1] + 0.9 * rng.normal(size=rows)
    grades = np.digitize(signal, [-1.2, -0.4, 0.4, 1.2])
    return x, grades, np.repeat(np.arange(queries), 6).astype(str)


def test_lambdamart_has_settings_of_its_own_and_beats_its_best_single_feature():
    """LambdaMART's own settings (relevance.config.LambdaMARTConfig: rate, leaves, gains, cut-off, patience) reach
    LightGBM, not the classifiers' shared ones; and on held-out short lists it ranks better than its best
    feature alone (on Home Depot it once ranked below BM25, one of its features)."""
    from relevance.models.metrics import ranking_metrics

    x, y, q = _short_lists(600, 0)
    vx, vy, vq = _short_lists(200, 1)
    tx, ty, tq = _short_lists(400, 2)
    with pytest.warns(UserWarning, match="LambdaMART reads gbdt.lambdamart"):  # said, not silently ignored
        config = GBDTConfig(max_rounds=400, learning_rate=0.3, num_leaves=4)  # the classifiers' settings
    model = train_gbdt("lambdamart", x, y, vx, vy, 5, config, {}, train_queries=q, valid_queries=vq, train_grades=y,
                       log=lambda _: None)
    own = config.lambdamart
    assert {k: model.booster.params[k] for k in ("learning_rate", "num_leaves", "eval_at", "label_gain")} == {
        "learning_rate": own.learning_rate, "num_leaves": own.num_leaves, "eval_at": [own.eval_at],
        "label_gain": [0.0, 1.0, 2.0, 3.0, 4.0] if own.label_gain == "linear" else [0.0, 1.0, 3.0, 7.0, 15.0]}
    assert set(model.manifest["valid"]) == {f"ndcg@{own.eval_at}"}
    ranked = ranking_metrics(tq, ty, model.scores(tx), ks=[10], num_grades=5)["ndcg@10"]
    alone = ranking_metrics(tq, ty, tx[:, 0], ks=[10], num_grades=5)["ndcg@10"]
    assert ranked > alone + 0.01, (ranked, alone)
    history: dict = {}
    short = train_gbdt("lambdamart", x, y, vx, vy, 5,
                       GBDTConfig(max_rounds=400, lambdamart=LambdaMARTConfig(eval_at=3, label_gain="exponential",
                                                                              early_stopping_rounds=5)),
                       {}, train_queries=q, valid_queries=vq, train_grades=y, log=lambda _: None, history=history)
    assert set(short.manifest["valid"]) == set(history["valid"]) == {"ndcg@3"}
    assert short.booster.params["label_gain"] == [0.0, 1.0, 3.0, 7.0, 15.0]
    assert len(history["valid"]["ndcg@3"]) == short.booster.best_iteration + 5  # its own patience
