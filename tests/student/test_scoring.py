"""relevance.student.scoring without a server: request validation names what is wrong, ranking is by expected grade
(ties keep the request's order). The whole path through a bundle is tests/serving/test_server.py."""

from __future__ import annotations

import numpy as np
import pytest

from relevance.config import ServingConfig
from relevance.student.scoring import Prepared, RequestError, lookup_cache, rank, validate_request

LIMITS = ServingConfig(max_candidates=3, max_query_chars=10, max_item_id_chars=5)


def test_a_valid_request_is_normalised():
    assert validate_request("  drill ", None, ["a", "b"], LIMITS) == ("drill", "", ["a", "b"])


@pytest.mark.parametrize("query, locale, candidates, message", [
    (3, "en", ["a"], "query: expected a string, got int"),
    ("  ", "en", ["a"], "query: expected a non-empty string"),
    ("x" * 11, "en", ["a"], "query: at most 10 characters, got 11"),
    ("q", 5, ["a"], "locale: expected a language tag"),
    ("q", "en", "a", "candidates: expected a list of item ids, got str"),
    ("q", "en", [], "candidates: expected at least one item id"),
    ("q", "en", ["a", "b", "c", "d"], "candidates: at most 3 per request, got 4"),
    ("q", "en", ["a", ""], r"candidates\[1\]: expected a non-empty string item id"),
    ("q", "en", ["toolong"], r"candidates\[0\]: item ids are at most 5 characters, got 7"),
    ("q", "en", ["a", "a"], "candidates: expected unique item ids, 'a' appears more than once"),
])
def test_a_bad_request_says_precisely_what_is_wrong(query, locale, candidates, message):
    with pytest.raises(RequestError, match=message):
        validate_request(query, locale, candidates, LIMITS)


def test_rank_orders_by_expected_grade_and_keeps_ties_in_request_order():
    prepared = Prepared("q", "", ["a", "b", "c"], np.zeros(2, np.float32), np.zeros((3, 2), np.float32),
                        np.zeros((3, 11), np.float32), np.array([False, True, False]), False)
    probs = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]], np.float32)
    ranking = rank(prepared, probs)
    assert ranking.item_ids == ["b", "a", "c"]
    assert ranking.unknown.tolist() == [True, False, False]
    assert ranking.to_dict()["items"][0] == {"item_id": "b", "score": 2.0, "probs": [0.0, 0.0, 1.0], "unknown": True}
    with pytest.raises(ValueError, match=r"expected probabilities of shape \[3, K\], got \[2, 3\]"):
        rank(prepared, probs[:2])


def test_no_cache_for_size_zero():
    assert lookup_cache(0) is None
    cache = lookup_cache(2)
    cache.set("q", 1)
    assert cache.get("q") == (1, True)


def test_student_inputs_send_the_query_once_or_once_per_candidate():
    from relevance.student.scoring import batch_inputs

    def prepared(n: int, value: float) -> Prepared:
        return Prepared("q", "", [f"i{k}" for k in range(n)], np.full(2, value, np.float32),
                        np.full((n, 2), value, np.float32), np.full((n, 11), value, np.float32), np.zeros(n, bool),
                        False)

    one = prepared(3, 1.0).student_inputs()
    assert one["query"].shape == (1, 2) and one["item"].shape == (3, 2) and one["lexical"].shape == (3, 11)
    assert prepared(3, 1.0).student_inputs(per_candidate=True)["query"].shape == (3, 2)
    both = batch_inputs([prepared(3, 1.0), prepared(2, 2.0)])
    assert {k: v.shape for k, v in both.items()} == {"query": (5, 2), "item": (5, 2), "lexical": (5, 11)}
    assert both["query"][:, 0].tolist() == [1, 1, 1, 2, 2]
