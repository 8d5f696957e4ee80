import numpy as np
import pandas as pd
import pytest

from relevance.candidates import BM25Index, bm25_candidates
from relevance.features import LEXICAL_FEATURES, PairFeaturizer, feature_names, featurize, lexical_features

ITEMS = pd.DataFrame({"item_id": ["sofa", "lamp", "drill", "bits"],
                      "title": ["red leather sofa", "brass floor lamp", "cordless drill 18v", "drill bits set"]})


@pytest.fixture()
def index():
    return BM25Index(ITEMS["item_id"], ITEMS["title"].tolist())


def test_bm25_top_k_and_pair_scores_agree(index):
    ids, scores = index.top_k("cordless drill", 3)
    assert ids[0] == "drill" and list(ids) == ["drill", "bits"], "items without a matching term are dropped"
    assert scores[0] > scores[1] > 0
    pair = index.score_pairs(["cordless drill", "cordless drill", "unknown words"], ["drill", "sofa", "drill"])
    assert pair[0] == pytest.approx(scores[0]) and pair[1] == 0 and pair[2] == 0
    assert index.score_pairs(["drill"], ["not-in-catalog"])[0] == 0


def test_candidates_exclude_judged_pairs(index):
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["drill", "red sofa"]})
    judged = pd.DataFrame({"query_id": ["q1"], "item_id": ["drill"]})
    candidates = bm25_candidates(index, queries, 5, exclude=judged)
    assert set(map(tuple, candidates[["query_id", "item_id"]].to_numpy())) == {("q1", "bits"), ("q2", "sofa")}


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


def test_pair_featurizer_is_featurize_on_looked_up_inputs(index):
    item_text = ITEMS.set_index("item_id")["title"]
    featurizer = PairFeaturizer(ITEMS, item_text, _FakeCache(), index)
    x = featurizer.transform(["cordless drill", "red sofa"], ["drill", "sofa"])
    cache = _FakeCache()
    expected = featurize(["cordless drill", "red sofa"], ["cordless drill 18v", "red leather sofa"],
                         ["cordless drill 18v", "red leather sofa"],
                         index.score_pairs(["cordless drill", "red sofa"], ["drill", "sofa"]),
                         cache.embed(["cordless drill", "red sofa"]), cache.embed(["cordless drill 18v",
                                                                                   "red leather sofa"]))
    np.testing.assert_array_equal(x, expected)


def test_embedding_cache_embeds_only_new_texts(tmp_path, tiny_bert):
    from relevance.encoder import BiEncoder, EmbeddingCache

    encoder = BiEncoder(str(tiny_bert), max_length=16, precision="fp32")
    cache = EmbeddingCache(tmp_path, encoder)
    first = cache.embed(["red sofa", "brass lamp"])
    assert cache.last_misses == 2
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    reopened = EmbeddingCache(tmp_path, encoder)  # persisted across processes
    again = reopened.embed(["brass lamp", "red sofa", "blue rug"])
    assert reopened.last_misses == 1, "only the changed catalog entry is embedded again"
    np.testing.assert_allclose(again[:2], first[::-1], atol=1e-6)
    np.testing.assert_allclose(again[2], encoder.encode(["blue rug"])[0], atol=1e-5)
