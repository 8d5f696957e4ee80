"""The labelling plan: the fewest devices that meet the deadline (checked against every shard size), shards that
cover the pool exactly once, the cut of a run-time pool larger than planned, and the refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relevance.config import build_config
from relevance.labels.capacity import pairs_per_s_from_flops, plan_for, plan_labelling


def test_thirty_million_pairs_in_an_hour_with_an_8b_teacher():
    # 2 × 8e9 × 128 FLOPs per pair at 35% of an H100's 989 bf16 TFLOP/s: 169 pairs/s per GPU (an estimate).
    rate = pairs_per_s_from_flops(8e9, 128, 989e12, 0.35)
    assert rate == pytest.approx(169.0, abs=0.1)
    plan = plan_labelling(30_000_000, 169.0, shard_overhead_s=90, deadline_s=3600, max_shard_s=600,
                          max_devices=128)
    assert (plan.devices, plan.waves, plan.shard_rows, plan.shards) == (70, 5, 85_715, 350)
    assert plan.fits and plan.wall_s + plan.shard_s <= 3600 and plan.shard_s <= 600
    # without pod starts and teacher loads it would take 30M / 169 / 3600 = 49.3 GPUs; the plan pays 15% for them
    assert math.ceil(30_000_000 / 169 / 3600) == 50 and plan.labelling_fraction == pytest.approx(0.85, abs=0.01)


def test_the_gpu_profile_plans_with_the_flops_estimate():
    capacity = build_config("gpu").cluster.labeling
    assert capacity.pairs_per_s_per_device == math.floor(pairs_per_s_from_flops(8e9, 128, 989e12, 0.35))
    assert capacity.expected_pool_rows == 30_000_000 and plan_for(capacity).devices == 70


@settings(max_examples=60, deadline=None)
@given(pool_rows=st.integers(1, 3000), pairs_per_s=st.floats(1, 30), overhead=st.floats(0.5, 20),
       max_shard_s=st.floats(21, 120), deadline_s=st.floats(60, 400), max_devices=st.integers(1, 12))
def test_no_fewer_devices_meet_the_deadline_with_any_shard_size(pool_rows, pairs_per_s, overhead, max_shard_s,
                                                                deadline_s, max_devices):
    try:
        plan = plan_labelling(pool_rows, pairs_per_s, overhead, deadline_s, max_shard_s, max_devices)
    except ValueError:  # not even one row fits in a shard
        assert pairs_per_s * (min(max_shard_s, deadline_s / 2) - overhead) < 1
        return
    # the shards cover the pool exactly once, every device busy for the same waves
    assert plan.shards * plan.shard_rows >= pool_rows > (plan.shards - 1) * plan.shard_rows
    assert plan.shards <= plan.devices * plan.waves and plan.devices <= min(max_devices, plan.shards)
    assert plan.shard_s <= max_shard_s + 1e-9

    def fits(devices: int, shard_rows: int) -> bool:
        shard_s = overhead + shard_rows / pairs_per_s
        waves = math.ceil(math.ceil(pool_rows / shard_rows) / devices)
        return shard_s <= max_shard_s and (waves + 1) * shard_s <= deadline_s

    if plan.fits:
        for devices in range(1, plan.devices):
            assert not any(fits(devices, rows) for rows in range(1, pool_rows + 1)), devices
    else:  # then nothing fits with the devices allowed
        assert not any(fits(max_devices, rows) for rows in range(1, pool_rows + 1))


def test_a_pool_larger_than_planned_uses_every_device_and_says_it_misses_the_deadline():
    plan = plan_labelling(40_000_000, 169.0, 90, 3600, 600, max_devices=70)
    assert plan.devices == 70 and not plan.fits and plan.shard_s <= 600
    assert "MISSED" in plan.summary()
    with pytest.raises(ValueError, match=r"it needs 93 devices; at most 70 allowed take"):
        plan_labelling(40_000_000, 169.0, 90, 3600, 600, max_devices=70, strict=True)


def test_a_small_pool_is_one_shard_on_one_device():
    plan = plan_labelling(500, 300.0, 10, 3600, 600, max_devices=8)
    assert (plan.devices, plan.shards, plan.shard_rows, plan.waves) == (1, 1, 500, 1) and plan.fits


def test_the_run_time_cut_keeps_within_the_compiled_parallelism():
    capacity = build_config("default").cluster.labeling
    compiled = plan_for(capacity).devices
    for rows in (1, 10_000, 2_000_000, capacity.expected_pool_rows, 3 * capacity.expected_pool_rows):
        plan = plan_for(capacity, pool_rows=rows, max_devices=compiled)
        assert plan.devices <= compiled and plan.shard_s <= capacity.max_shard_s
        assert plan.fits == (rows <= capacity.expected_pool_rows)


@pytest.mark.parametrize("arguments, message", [
    (dict(pool_rows=0), r"pool_rows must be an integer >= 1, got 0"),
    (dict(max_devices=0), r"max_devices must be an integer >= 1, got 0"),
    (dict(pairs_per_s=0.0), r"pairs_per_s must be > 0, got 0.0"),
    (dict(shard_overhead_s=600.0), r"must be > 0 and below max_shard_s \(600 s\).*got 600.0"),
    (dict(deadline_s=100.0), r"no shard fits: a shard may last .* = 50 s .* takes 90 s"),
])
def test_impossible_inputs_are_refused_with_what_was_expected(arguments, message):
    values = dict(pool_rows=1000, pairs_per_s=169.0, shard_overhead_s=90.0, deadline_s=3600.0, max_shard_s=600.0,
                  max_devices=4) | arguments
    with pytest.raises(ValueError, match=message):
        plan_labelling(**values)
    with pytest.raises(ValueError, match=r"mfu must be in \(0, 1\], got 1.5"):
        pairs_per_s_from_flops(8e9, 128, 989e12, 1.5)
