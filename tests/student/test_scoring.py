"""relevance.student.scoring without a server: request validation names what is wrong, ranking is by expected grade
(ties keep the request's order). The whole path through a bundle is tests/serving/test_server.py."""

from __future__ import annotations

import numpy as np
import pytest

from relevance.config import ServingConfig
from relevance.student.scoring import ItemCache, Prepared, RequestError, lookup_cache, rank, validate_request

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


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def row(value: float, title: str = "t") -> tuple:
    return np.full(2, value, np.float32), title, f"text {title}"


def test_item_cache_keeps_rows_and_unknown_ids_until_they_expire():
    clock = Clock()
    cache = ItemCache(4, 2, ttl_seconds=10, clock=clock)
    assert cache.lookup(["a", "b"]).tolist() == [-1, -1]
    cache.put({"a": row(1.0, "A"), "b": None})
    slots = cache.lookup(["b", "zz", "a"])
    assert slots[1] == -1 and (slots[[0, 2]] >= 0).all()
    assert cache.embeddings[slots[2]].tolist() == [1.0, 1.0] and cache.titles[slots[2]] == "A"
    assert cache.texts[slots[2]] == "text A" and cache.known[slots[2]]
    assert not cache.known[slots[0]] and cache.embeddings[slots[0]].tolist() == [0.0, 0.0]
    clock.now = 10.0  # a value lives ttl_seconds: a new materialization shows within that time
    assert cache.lookup(["a", "b"]).tolist() == [-1, -1]
    cache.put({"a": row(2.0, "A2")})  # refreshed in its own slot, not a second one
    assert len(cache) == 2 and cache.used == 2
    assert cache.embeddings[cache.lookup(["a"])[0]].tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="at least one item"):
        ItemCache(0, 2, 1.0)


def test_item_cache_evicts_by_clock_sparing_what_was_read():
    cache = ItemCache(3, 2, ttl_seconds=100, clock=Clock())
    cache.put({"a": row(1), "b": row(2), "c": row(3)})
    cache.lookup(["a", "c"])  # read since the hand last passed: each spared once
    cache.put({"d": row(4)})
    assert len(cache) == 3 and cache.lookup(["b"]).tolist() == [-1]
    assert (cache.lookup(["a", "c", "d"]) >= 0).all()
    cache.put({"e": row(5), "f": row(6), "g": row(7)})  # more than it holds: never more than capacity
    assert len(cache) == 3 and (cache.lookup(["e", "f", "g"]) >= 0).all()
    assert sorted(cache.slot_of.values()) == [0, 1, 2]


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


def test_item_cache_refuses_a_lifetime_that_is_not_positive():
    with pytest.raises(ValueError, match="positive time"):
        ItemCache(4, 2, ttl_seconds=0)
