"""Active learning selection: each strategy's order, the per-query cap, diversity, and clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relevance.data.schema import DataContractError
from relevance.labels.active import entropy, select


def _candidates():
    # q1: four confident-to-unsure pairs; q2: one very unsure pair; q3: one confident pair.
    probs = np.array([[0.98, 0.01, 0.01], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33], [0.4, 0.4, 0.2],
                      [0.33, 0.34, 0.33], [0.9, 0.05, 0.05]])
    return pd.DataFrame({"query_id": ["q1"] * 4 + ["q2", "q3"], "item_id": list("abcdef"),
                         **{f"p_{k}": probs[:, k] for k in range(3)}})


def test_entropy_picks_the_unsure_pairs_with_at_most_n_per_query():
    chosen = select(_candidates(), budget=3, strategy="entropy", num_grades=3, per_query=2)
    assert list(chosen["item_id"]) == ["e", "c", "d"]  # e (q2) and c, d (q1, capped at 2); b waits
    assert chosen["score"].is_monotonic_decreasing and set(chosen["strategy"]) == {"entropy"}
    capped = select(_candidates(), budget=6, strategy="entropy", num_grades=3, per_query=1)
    assert list(capped["item_id"]) == ["e", "c", "f"]  # one per query: fewer than the budget


def test_disagreement_follows_the_gap_in_expected_grade():
    candidates = _candidates()
    student = candidates[["p_0", "p_1", "p_2"]].to_numpy().copy()
    student[0] = [0.0, 0.0, 1.0]  # the student thinks a is exact; the teacher, irrelevant
    chosen = select(candidates, budget=1, strategy="disagreement", num_grades=3, student_probs=student)
    assert list(chosen["item_id"]) == ["a"] and chosen["score"][0] == pytest.approx(2 - 0.03)
    with pytest.raises(ValueError, match="needs the student's probabilities"):
        select(candidates, budget=1, strategy="disagreement", num_grades=3)


def test_diverse_skips_near_duplicates_and_random_is_seeded():
    candidates = _candidates()
    vectors = np.eye(6)
    vectors[2] = vectors[4]  # c is e's twin in embedding space
    chosen = select(candidates, budget=2, strategy="diverse", num_grades=3, embeddings=vectors, per_query=4)
    assert list(chosen["item_id"])[1] == "d" and list(chosen["item_id"])[0] in {"c", "e"}  # not both twins
    # With no weight on diversity it is the entropy order (the twins first); all pairs come out eventually.
    plain = select(candidates, budget=2, strategy="diverse", num_grades=3, embeddings=vectors, diversity=0.0,
                   per_query=4)
    assert set(plain["item_id"]) == {"c", "e"}
    assert len(select(candidates, budget=6, strategy="diverse", num_grades=3, embeddings=vectors, per_query=4)) == 6
    first = select(candidates, budget=4, strategy="random", num_grades=3, seed=1, per_query=4)
    assert first.equals(select(candidates, budget=4, strategy="random", num_grades=3, seed=1, per_query=4))
    assert not first["item_id"].equals(select(candidates, budget=4, strategy="random", num_grades=3, seed=2,
                                              per_query=4)["item_id"])


def test_bad_selection_inputs_are_clear_errors():
    candidates = _candidates()
    with pytest.raises(ValueError, match="budget must be at least 1"):
        select(candidates, 0, "entropy", 3)
    with pytest.raises(DataContractError, match=r"missing column\(s\) \['p_2'\]"):
        select(candidates.drop(columns="p_2"), 1, "entropy", 3)
    with pytest.raises(DataContractError, match="appears twice"):
        select(pd.concat([candidates, candidates.iloc[:1]]), 1, "entropy", 3)
    with pytest.raises(ValueError, match="unknown strategy"):
        select(candidates, 1, "clever", 3)
    assert entropy(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)
