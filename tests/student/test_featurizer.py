"""The student's featurizer: lexical features by hand, the vector's layout, and the offline wiring."""

from __future__ import annotations

import numpy as np
import pytest

from relevance.student.featurizer import LEXICAL_FEATURES, PairFeaturizer, feature_names, featurize, lexical_features


def test_lexical_features_by_hand():
    features = lexical_features(["cordless drill 18v"], ["title: cordless drill 18v ; boards: tools"],
                                ["cordless drill 18v"], np.array([3.0]))
    named = dict(zip(LEXICAL_FEATURES[1:], features[0]))
    assert named["terms_matched"] == 1 and named["all_terms_matched"] == 1 and named["exact_phrase"] == 1
    assert named["numbers_matched"] == 1 and named["bm25_per_term"] == pytest.approx(1.0)
    miss = dict(zip(LEXICAL_FEATURES[1:], lexical_features(["drills 20v"], ["title: drill"], ["drill"],
                                                            np.array([0.0]))[0]))
    assert miss["terms_matched"] == 0 and miss["prefix_matched"] == 0.5 and miss["numbers_matched"] == 0
    inside_a_word = dict(zip(LEXICAL_FEATURES[1:], lexical_features(["ham"], ["hammer drill"], ["hammer drill"],
                                                                     np.array([0.0]))[0]))
    assert inside_a_word["exact_phrase"] == 0, "a phrase matches whole words only"


def test_featurize_layout_and_validation():
    rng = np.random.default_rng(0)
    q, i = rng.normal(size=(2, 8)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)
    x = featurize(["a", "b"], ["a", "c"], ["a", "c"], np.zeros(2), q, i)
    assert x.shape == (2, 4 * 8 + len(LEXICAL_FEATURES)) == (2, len(feature_names(8)))
    np.testing.assert_allclose(x[:, 16:24], q * i)
    np.testing.assert_allclose(x[:, 32], np.einsum("nd,nd->n", q, i), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        featurize(["a"], ["a"], ["a"], np.zeros(1), q, i)


class _FakeCache:
    """Deterministic vectors by text: lets the test check the wiring, not the encoder."""

    def embed(self, texts, description=""):
        return np.stack([np.full(4, (hash(t) % 97) / 97, dtype=np.float32) for t in texts])


def test_pair_featurizer_is_featurize_on_looked_up_inputs(index, four_items):
    item_text = four_items.set_index("item_id")["title"]
    featurizer = PairFeaturizer(item_text, item_text, _FakeCache(), index)
    x = featurizer.transform(["cordless drill", "red sofa"], ["drill", "sofa"])
    cache = _FakeCache()
    expected = featurize(["cordless drill", "red sofa"], ["cordless drill 18v", "red leather sofa"],
                         ["cordless drill 18v", "red leather sofa"],
                         index.score_pairs(["cordless drill", "red sofa"], ["drill", "sofa"]),
                         cache.embed(["cordless drill", "red sofa"]), cache.embed(["cordless drill 18v",
                                                                                   "red leather sofa"]))
    np.testing.assert_array_equal(x, expected)
