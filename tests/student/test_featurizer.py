"""The student's featurizer: lexical features by hand, the vector's layout, and the offline wiring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relevance.student.featurizer import (LEXICAL_FEATURES, PairFeaturizer, assemble, feature_names, lexical_features,
                                         pair_blocks)


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


# Computed by the pair-at-a-time definition the students in benchmarks/results were trained on (commit 953d81d):
# the column-at-a-time one must give these values bit for bit, or stored pair features no longer match serving.
GOLDEN = [[1.3862943649291992, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.3862943649291992, 1.945910096168518],
          [0.0, 0.0, 0.6666666865348816, 0.6666666865348816, 0.6666666865348816, 0.0, 0.0, 0.0, 0.5454545617103577,
           1.3862943649291992, 0.6931471824645996],
          [2.110213279724121, 1.4500000476837158, 1.0, 0.20000000298023224, 1.0, 1.0, 0.0, 1.0, 0.3076923191547394,
           1.7917594909667969, 2.1972246170043945],
          [0.9162907600402832, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.6931471824645996],
          [0.0, -0.25, 1.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.2666666805744171, 1.0986123085021973, 1.6094379425048828]]


def test_lexical_features_equal_the_definition_students_were_trained_on():
    queries = ["cordless drill 18v", "drill drill 20v", "2 x 4 stud 2", "", "red sofa"]
    texts = ["title: cordless drill 18v ; boards: tools", "drill", "2 x 4 in. x 8 ft. stud", "anything",
             "sofa red leather couch"]
    titles = ["cordless drill 18v", "drill", "stud", "", "red couch"]
    bm25 = np.array([3.0, 0.0, 7.25, 1.5, -0.5], dtype=np.float32)
    np.testing.assert_array_equal(lexical_features(queries, texts, titles, bm25), np.array(GOLDEN, dtype=np.float32))


def test_lexical_features_do_not_depend_on_how_rows_are_grouped():
    # Rows are computed a query at a time: interleaved queries, a pandas Series with a shuffled index (taken by
    # position), float64 BM25 and repeated numbers give each row what it gets alone.
    rng = np.random.default_rng(3)
    queries = ["2 x 4 stud 2", "cordless drill drill", "", "red sofa", "2 x 4 stud 2"] * 4
    texts = ["2 x 4 in. x 8 ft. stud", "cordless drill 18v kit", "", "sofa red leather", "2x4 stud"] * 4
    titles = ["2 x 4 stud", "drill", "x", "sofa", ""] * 4
    order = rng.permutation(len(queries))
    queries, texts, titles = ([column[i] for i in order] for column in (queries, texts, titles))
    bm25 = rng.gamma(2.0, 3.0, len(queries))
    bm25[::3] = -0.25  # BM25 variants can score below zero; log_bm25 clips at 0
    together = lexical_features(queries, pd.Series(texts, index=rng.permutation(len(texts))), titles, bm25)
    alone = np.concatenate([lexical_features([q], [t], [ti], bm25[n:n + 1])
                            for n, (q, t, ti) in enumerate(zip(queries, texts, titles))])
    np.testing.assert_array_equal(together, alone)
    for query in set(queries):  # one query's rows as a request (the one-query path), its queries a shuffled Series
        rows = [n for n, q in enumerate(queries) if q == query]
        request = lexical_features(pd.Series([query] * len(rows), index=rng.permutation(len(rows))),
                                   [texts[n] for n in rows], [titles[n] for n in rows], bm25[rows])
        np.testing.assert_array_equal(request, alone[rows])
    named = dict(zip(LEXICAL_FEATURES[1:], lexical_features(["2 x 4 stud 2"], ["2 x 4 stud"], ["stud"],
                                                            np.array([1.0]))[0]))
    assert named["numbers_matched"] == 1 and named["terms_matched"] == 1 and named["terms_matched_title"] == 1 / 5


def test_assemble_layout_and_validation():
    rng = np.random.default_rng(0)
    q, i = rng.normal(size=(2, 8)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)
    x = assemble(q, i, lexical_features(["a", "b"], ["a", "c"], ["a", "c"], np.zeros(2)))
    assert x.shape == (2, 4 * 8 + len(LEXICAL_FEATURES)) == (2, len(feature_names(8)))
    np.testing.assert_allclose(x[:, 16:24], q * i)
    np.testing.assert_allclose(x[:, 32], np.einsum("nd,nd->n", q, i), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        assemble(q[:1], i, np.zeros((2, len(LEXICAL_FEATURES) - 1), np.float32))


def test_pair_blocks_are_one_definition_for_numpy_and_torch_and_broadcast_one_query_row():
    import torch

    rng = np.random.default_rng(1)
    q, i = rng.normal(size=(1, 8)).astype(np.float32), rng.normal(size=(5, 8)).astype(np.float32)
    lexical = rng.normal(size=(5, len(LEXICAL_FEATURES) - 1)).astype(np.float32)
    rows = np.repeat(q, 5, 0)
    expected = assemble(rows, i, lexical)
    blocks = pair_blocks(torch.from_numpy(q), torch.from_numpy(i), torch.from_numpy(lexical))
    # The query block stays one row (the serving graph applies its weights once); the rest broadcast over items.
    assert tuple(blocks[0].shape) == (1, 8)
    got = torch.cat([blocks[0].expand(5, -1), *blocks[1:]], 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_lexical_features_count_repeated_terms_and_take_no_rows():
    # Repeats count again (as bm25s counts them): "drill drill 20v" matches 2 of 3 terms in "drill".
    named = dict(zip(LEXICAL_FEATURES[1:], lexical_features(["drill drill 20v"], ["drill"], ["drill"],
                                                            np.array([0.0]))[0]))
    assert named["terms_matched"] == pytest.approx(2 / 3) and named["prefix_matched"] == pytest.approx(2 / 3)
    assert lexical_features([], [], [], np.zeros(0)).shape == (0, len(LEXICAL_FEATURES) - 1)


class _FakeCache:
    """Deterministic vectors by text: lets the test check the wiring, not the encoder."""

    def embed(self, texts, description=""):
        return np.stack([np.full(4, (hash(t) % 97) / 97, dtype=np.float32) for t in texts])


def test_pair_featurizer_is_assemble_on_looked_up_inputs(index, four_items):
    item_text = four_items.set_index("item_id")["title"]
    featurizer = PairFeaturizer(item_text, item_text, _FakeCache(), index)
    x = featurizer.transform(["cordless drill", "red sofa"], ["drill", "sofa"])
    cache = _FakeCache()
    lexical = lexical_features(["cordless drill", "red sofa"], ["cordless drill 18v", "red leather sofa"],
                               ["cordless drill 18v", "red leather sofa"],
                               index.score_pairs(["cordless drill", "red sofa"], ["drill", "sofa"]))
    expected = assemble(cache.embed(["cordless drill", "red sofa"]),
                        cache.embed(["cordless drill 18v", "red leather sofa"]), lexical)
    np.testing.assert_array_equal(x, expected)


def test_term_counts_by_key_equal_set_intersections_with_or_without_the_query_table(monkeypatch):
    # Counts are found by hashed key, through a query's direct-mapped table or, for a query whose keys collide
    # in every table size allowed, a binary search: both must be the set intersections the features define.
    from relevance.models.text import tokenize_words
    from relevance.student import featurizer

    rng = np.random.default_rng(7)
    words = ["drill", "drills", "18v", "2x4", "stud", "sofa", "red", "ünï", "a", "x", "8ft", "couch", "dr"]

    def text(length: int) -> str:
        return " ".join(rng.choice(words, length))

    queries = [text(int(rng.integers(0, 6))) for _ in range(40)]
    texts = [text(int(rng.integers(0, 12))) for _ in range(40)]
    titles = [text(int(rng.integers(0, 5))) for _ in range(40)]

    def by_sets(query: str, item_text: str, title: str) -> list[int]:
        terms, tokens, title_words = tokenize_words(query), set(tokenize_words(item_text)), set(tokenize_words(title))
        shared = featurizer._trigrams(query) & featurizer._trigrams(title)
        return [sum(t in tokens for t in terms), sum(t in title_words for t in terms),
                sum(t[:4] in {w[:4] for w in tokens} for t in terms),
                sum(t in tokens for t in terms if any(c.isdigit() for c in t)), len(shared)]

    expected = np.array([by_sets(*row) for row in zip(queries, texts, titles)])
    try:
        for bits in (featurizer._MAX_TABLE_BITS, 0):  # 0: no table fits, every query takes the binary search
            monkeypatch.setattr(featurizer, "_MAX_TABLE_BITS", bits)
            featurizer._query_side.cache_clear()
            sides = [featurizer._item_side(t, ti) for t, ti in zip(texts, titles)]
            one_by_one = np.concatenate([featurizer._counts(featurizer._query_side(q), [side[0]], [side[1]])
                                         for q, side in zip(queries, sides)])
            np.testing.assert_array_equal(one_by_one, expected)
            for q in queries[:5]:  # every item at once: each hit summed into its own item's row
                keys, lengths = [side[0] for side in sides], [side[1] for side in sides]
                np.testing.assert_array_equal(featurizer._counts(featurizer._query_side(q), keys, lengths),
                                              [by_sets(q, t, ti) for t, ti in zip(texts, titles)])
            tables = [featurizer._query_side(q).table is not None for q in queries]
            assert (not any(tables)) if bits == 0 else sum(tables) > len(queries) // 2
    finally:
        featurizer._query_side.cache_clear()


def test_a_long_query_keeps_its_table_small():
    # Queries reach 512 characters in serving (hundreds of keys): their tables stay within 2^_MAX_TABLE_BITS slots
    # (or none: the binary search), so the cache of query sides stays bounded, and the counts stay exact.
    from relevance.student import featurizer

    query = " ".join(f"part{n} {n}x{n + 1}" for n in range(40))[:512]
    side = featurizer._query_side(query)
    assert side.table is None or side.table.nbytes + side.position.nbytes <= 12 << featurizer._MAX_TABLE_BITS
    features = lexical_features([query], [query], [query], np.array([1.0]))
    named = dict(zip(LEXICAL_FEATURES[1:], features[0]))
    assert named["terms_matched"] == 1 and named["terms_matched_title"] == 1 and named["char3_jaccard_title"] == 1
