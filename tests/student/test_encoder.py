"""The bi-encoder's content-addressed embedding cache."""

from __future__ import annotations

import numpy as np


def test_embedding_cache_embeds_only_new_texts(tmp_path, tiny_bert):
    from relevance.student.encoder import BiEncoder, EmbeddingCache

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
