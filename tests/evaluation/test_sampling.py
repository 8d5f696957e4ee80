"""Stratified sampling for judged comparisons: strata, proportional and Neyman allocation, the stratified
estimator against simple random sampling, and the minimum detectable effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relevance.evaluation.sampling import (
    allocate,
    minimum_detectable_effect,
    population_variance,
    queries_needed,
    query_strata,
    srs_estimate,
    stratified_estimate,
    stratified_sample,
)


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


def test_allocation_spends_the_whole_budget_when_strata_cannot_all_have_two():
    # Four strata of 10 and a budget of 8 used to draw 4 queries; nine strata and 15 (judge-eval --queries 20's
    # main sample) drew one per stratum, leaving no variance anywhere.
    four = allocate(pd.Series({f"s{i}": 10 for i in range(4)}), 8)
    assert four.sum() == 8 and (four == 2).all()
    nine = allocate(pd.Series({f"s{i}": 100 * (i + 1) for i in range(9)}), 15)
    assert nine.sum() == 15 and (nine >= 1).all() and nine["s8"] > nine["s0"]  # the rest goes by weight
    more_strata = allocate(pd.Series({f"s{i}": 10 + i for i in range(12)}), 5)
    assert more_strata.sum() == 5 and more_strata.max() == 1


def test_strata_with_one_scored_query_never_give_a_zero_width_interval():
    strata = pd.Series({f"q{i}": f"s{i % 3}" for i in range(3)})
    values = pd.Series({"q0": 0.1, "q1": -0.2, "q2": 0.4})
    estimate = stratified_estimate(values, strata, pd.Series({"s0": 50, "s1": 50, "s2": 50}))
    assert estimate.std_error > 0 and estimate.collapsed_strata == ["s0", "s1", "s2"]
    # One lone single borrows the other strata's pooled within-stratum variance (s² = 0.01 on 2 df here).
    strata = pd.Series({"a1": "A", "a2": "A", "a3": "A", "b1": "B"})
    values = pd.Series({"a1": 0.0, "a2": 0.1, "a3": 0.2, "b1": 0.9})
    estimate = stratified_estimate(values, strata, pd.Series({"A": 100, "B": 100}))
    own, lone = 0.25 * (1 - 3 / 100) * 0.01 / 3, 0.25 * (1 - 1 / 100) * 0.01  # both on A's 2 degrees of freedom
    assert estimate.std_error == pytest.approx((own + lone) ** 0.5) and estimate.borrowed_strata == ["B"]
    assert estimate.df == pytest.approx((own + lone) ** 2 / (own ** 2 / 2 + lone ** 2 / 2))
    assert estimate.collapsed_strata == [] and "pooled" in estimate.notes()[0]
    with pytest.raises(ValueError, match="at least two"):
        stratified_estimate(pd.Series({"b1": 0.5}), strata, pd.Series({"A": 100, "B": 100}))


def test_one_lone_query_in_a_small_stratum_does_not_drown_a_clear_effect():
    """A review found the old collapsed-strata pairing turn a clear +0.03 into "no difference": it replaced the big
    stratum's variance by (W_big·ȳ_big − W_small·y)², the squared effect itself, on one degree of freedom (34×
    wider, power 100% → 0%). Borrowing the pooled variance keeps the interval about as wide as without the lone
    query."""
    rng = np.random.default_rng(3)
    sizes = pd.Series({"big": 9900, "small": 100})
    found = []
    for _ in range(50):
        big = pd.Series(rng.normal(0.03, 0.06, 200), index=[f"b{i}" for i in range(200)])
        lone = pd.Series({"s0": float(rng.normal(0.03, 0.06))})
        strata = pd.Series({**{q: "big" for q in big.index}, "s0": "small"})
        with_lone = stratified_estimate(pd.concat([big, lone]), strata, sizes)
        without = stratified_estimate(big, strata, sizes)
        width = lambda e: e.interval[1] - e.interval[0]  # noqa: E731
        found.append((width(with_lone) / width(without), with_lone.interval[0] > 0))
    ratios, significant = zip(*found)
    assert max(ratios) < 1.5 and np.mean(significant) > 0.95


def test_a_stratum_sampled_whole_adds_no_variance_and_is_not_collapsed():
    strata = pd.Series({"a1": "A", "a2": "A", "a3": "A", "c1": "C"})
    values = pd.Series({"a1": 0.0, "a2": 0.1, "a3": 0.2, "c1": 5.0})
    estimate = stratified_estimate(values, strata, pd.Series({"A": 100, "C": 1}))
    alone = stratified_estimate(values[["a1", "a2", "a3"]], strata, pd.Series({"A": 100}))
    weight = 100 / 101
    assert estimate.std_error == pytest.approx(weight * alone.std_error)
    assert estimate.collapsed_strata == [] and estimate.borrowed_strata == []


def test_a_population_that_is_itself_a_sample_gets_no_correction():
    """A window of traffic judged whole is a census of the window, but not of the traffic it stands for."""
    strata = pd.Series({"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B"})
    values = pd.Series({"a1": 0.0, "a2": 0.1, "a3": 0.2, "b1": 0.5, "b2": 0.9})
    window = pd.Series({"A": 3, "B": 2})
    assert stratified_estimate(values, strata, window).std_error == 0.0
    traffic = stratified_estimate(values, strata, window, finite=False)
    # W = (0.6, 0.4); s² = (0.01, 0.08); n = (3, 2): 0.36 · 0.01 / 3 + 0.16 · 0.08 / 2
    assert traffic.std_error == pytest.approx(np.sqrt(0.0012 + 0.0064))
    assert traffic.mean == pytest.approx(0.6 * 0.1 + 0.4 * 0.7)
    # A stratum of one query judged whole is no census of the traffic either: it borrows a variance.
    one = stratified_estimate(values[["a1", "a2", "a3", "b1"]], strata, pd.Series({"A": 3, "B": 1}), finite=False)
    assert one.borrowed_strata == ["B"] and one.std_error > 0


def test_a_stratum_with_nothing_scored_does_not_shrink_the_mean():
    # Two equal strata, both with a true mean difference 0.05; the second scored nothing (say, the judge found
    # nothing relevant in its sampled queries): the estimate is 0.05 of the scored stratum, not 0.025.
    strata = pd.Series({"a1": "A", "a2": "A", "a3": "A", "b1": "B"})
    values = pd.Series({"a1": 0.04, "a2": 0.05, "a3": 0.06})
    estimate = stratified_estimate(values, strata, pd.Series({"A": 100, "B": 100}))
    assert estimate.mean == pytest.approx(0.05)
    assert estimate.empty_strata == ["B"] and estimate.empty_weight == pytest.approx(0.5)
    assert "renormalised" in estimate.notes()[0]


def test_the_srs_comparison_is_unbiased_under_neyman_allocation():
    """The variance a simple random sample of the same size would have, estimated from a Neyman-allocated sample,
    matches the true one on average (the plain sample variance overstated it ~9×, and the design effect with it)."""
    rng = np.random.default_rng(1)
    population = pd.DataFrame({"stratum": ["head"] * 9000 + ["tail"] * 1000})
    population["y"] = np.where(population["stratum"] == "head", rng.normal(0.0, 0.01, 10000),
                               rng.normal(0.02, 0.3, 10000))
    population.index = [f"q{i}" for i in range(10000)]
    strata, sizes = population["stratum"], population["stratum"].value_counts()
    n = 300
    true_variance = (1 - n / 10000) * population["y"].var(ddof=1) / n
    plan = allocate(sizes, n, "neyman", population.groupby("stratum")["y"].std())
    assert plan["tail"] > 5 * plan["head"] * 1000 / 9000  # disproportionate: the tail is over-sampled
    estimated, unweighted = [], []
    for seed in range(200):
        chosen = stratified_sample(strata, plan, seed)
        srs = srs_estimate(population.loc[chosen, "y"], 10000, strata=strata, population=sizes)
        estimated.append(srs.std_error ** 2)
        unweighted.append(srs_estimate(population.loc[chosen, "y"], 10000).std_error ** 2)
    assert np.mean(estimated) == pytest.approx(true_variance, rel=0.15)
    assert np.mean(unweighted) > 3 * true_variance  # why the strata must be passed for a stratified sample


def test_intervals_with_collapsed_strata_cover_the_truth():
    """Two heavy, noisy strata sampled once each carry the variance (collapsed-strata estimator, one degree of
    freedom). The 95% interval uses Student's t with Satterthwaite's degrees of freedom and covers the population
    mean ~95% of the time; the normal quantile covered ~70%. The budget-15 shape of judge-eval --queries 20 (four
    single-query strata of nine) covers too."""
    rng = np.random.default_rng(0)
    sizes = pd.Series({"A": 400, "B": 400, "C": 200})
    strata = pd.Series(np.repeat(sizes.index, sizes.to_numpy()), index=[f"q{i}" for i in range(1000)])
    spread, centre = strata.map({"A": 0.3, "B": 0.3, "C": 0.02}), strata.map({"A": 0.0, "B": 0.05, "C": 0.01})
    values = pd.Series(rng.normal(0, 1, 1000) * spread + centre, index=strata.index)
    covered = 0
    for seed in range(600):
        chosen = stratified_sample(strata, pd.Series({"A": 1, "B": 1, "C": 10}), seed)
        estimate = stratified_estimate(values[chosen], strata, sizes)
        low, high = estimate.interval
        covered += low <= values.mean() <= high
    assert covered / 600 >= 0.9 and estimate.df < 3

    sizes = pd.Series({f"s{i}": 200 * (i + 1) for i in range(9)})
    strata = pd.Series(np.repeat(sizes.index, sizes.to_numpy()), index=[f"q{i}" for i in range(int(sizes.sum()))])
    values = pd.Series(rng.normal(0.0, 0.1, len(strata)) + strata.map({h: 0.02 * i for i, h in enumerate(sizes.index)}),
                       index=strata.index)
    plan = allocate(sizes, 15)
    covered = 0
    for seed in range(300):
        low, high = stratified_estimate(values[stratified_sample(strata, plan, seed)], strata, sizes).interval
        covered += low <= values.mean() <= high
    assert covered / 300 >= 0.93


def test_a_variance_of_zero_is_reported_not_a_crash():
    strata = pd.Series({"a": "A", "b": "B"})
    estimate = stratified_estimate(pd.Series({"a": 0.0, "b": 0.0}), strata, pd.Series({"A": 10, "B": 10}))
    assert estimate.std_error == 0 and estimate.df is None and "collapsed" in estimate.notes()[0]


def test_single_query_strata_do_not_count_as_zero_variance_in_the_srs_comparison():
    strata = pd.Series({"a1": "A", "a2": "A", "a3": "A", "b1": "B", "c1": "C"})
    values = pd.Series({"a1": 0.0, "a2": 0.2, "a3": 0.4, "b1": 0.2, "c1": 0.2})
    sizes = pd.Series({"A": 100, "B": 100, "C": 100})
    # every stratum mean is 0.2: S² is the within-stratum variance, 0.04, A's and (borrowed) B's and C's alike
    assert population_variance(values, strata, sizes) == pytest.approx(0.04)


def test_the_minimum_detectable_effect_uses_the_intervals_distribution():
    assert minimum_detectable_effect(0.01) == pytest.approx(0.028, abs=1e-3)
    assert minimum_detectable_effect(0.01, df=5) > 1.15 * minimum_detectable_effect(0.01)
    assert minimum_detectable_effect(0.01, df=5000) == pytest.approx(minimum_detectable_effect(0.01))
