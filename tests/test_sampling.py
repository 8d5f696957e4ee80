"""Stratified sampling for judged comparisons: strata, proportional and Neyman allocation, the stratified
estimator against simple random sampling, and the minimum detectable effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relevance.sampling import (allocate, minimum_detectable_effect, queries_needed, query_strata, srs_estimate,
                                stratified_estimate, stratified_sample)


def test_strata_cut_locale_length_and_traffic():
    queries = pd.DataFrame({"query_id": ["a", "b", "c", "d"], "query": ["sofa", "red leather sofa", "x y z w v", "lamp"],
                            "locale": ["en_US", "en_US", "de_DE", "de_DE"]})
    strata = query_strata(queries, traffic=pd.Series({"a": 100, "b": 1, "c": 5, "d": 50}), traffic_bands=2)
    assert strata["a"] == "en_US|len≤2|traffic2/2" and strata["b"] == "en_US|len≤4|traffic1/2"
    assert strata["c"] == "de_DE|len>4|traffic1/2" and query_strata(queries.drop(columns="locale"))["a"] == "len≤2|traffic?"


def test_allocation_sums_to_the_budget_and_neyman_follows_the_spread():
    sizes = pd.Series({"head": 800, "torso": 150, "tail": 50})
    proportional = allocate(sizes, 100)
    assert proportional.sum() == 100 and list(proportional) == [80, 15, 5]
    neyman = allocate(sizes, 100, "neyman", stds=pd.Series({"head": 0.01, "torso": 0.1, "tail": 0.5}))
    assert neyman.sum() == 100 and neyman["tail"] > neyman["head"]  # 50·0.5 > 800·0.01
    assert (allocate(sizes, 5000) == sizes).all()  # the whole population
    with pytest.raises(ValueError, match="needs each stratum's standard deviation"):
        allocate(sizes, 10, "neyman")


def test_stratified_estimate_beats_srs_when_strata_explain_the_spread():
    rng = np.random.default_rng(0)
    # Per-query differences: head queries barely move, tail queries move a lot and on average more.
    population = pd.DataFrame({"stratum": ["head"] * 8000 + ["tail"] * 2000})
    population["y"] = np.where(population["stratum"] == "head", rng.normal(0.0, 0.01, 10000),
                               rng.normal(0.05, 0.2, 10000))
    population.index = [f"q{i}" for i in range(10000)]
    strata, sizes = population["stratum"], population["stratum"].value_counts()
    pilot = population.groupby("stratum")["y"].std()
    errors = {"srs": [], "neyman": []}
    for seed in range(200):
        srs = population["y"].sample(400, random_state=seed)
        errors["srs"].append(srs.mean() - population["y"].mean())
        chosen = stratified_sample(strata, allocate(sizes, 400, "neyman", pilot), seed)
        estimate = stratified_estimate(population.loc[chosen, "y"], strata, sizes)
        errors["neyman"].append(estimate.mean - population["y"].mean())
    # Theory: SE ratio (Σ W_h S_h) / σ = 0.048 / 0.092 ≈ 0.52; the test allows sampling noise over 200 draws.
    assert np.std(errors["neyman"]) < 0.75 * np.std(errors["srs"])
    one = stratified_estimate(population.loc[chosen, "y"], strata, sizes)
    assert one.std_error < srs_estimate(population.loc[chosen, "y"], 10000).std_error
    low, high = one.interval
    assert low < one.mean < high


def test_minimum_detectable_effect_and_queries_needed_agree():
    assert minimum_detectable_effect(0.01) == pytest.approx(2.8016 * 0.01, rel=1e-3)
    n = queries_needed(0.01, per_query_std=0.1)
    assert minimum_detectable_effect(0.1 / np.sqrt(n)) <= 0.01 < minimum_detectable_effect(0.1 / np.sqrt(n - 1))
    assert queries_needed(0.01, 0.1, design_effect=0.25) == pytest.approx(n / 4, abs=1)
    with pytest.raises(ValueError, match="must be positive"):
        queries_needed(0.0, 0.1)
