"""How to cut the labelling fan-out: shard size and number of devices, from the teacher's speed on one device.

Each label shard is one pod that starts, loads the teacher (a fixed cost, ``shard_overhead_s``) and labels its
rows at ``pairs_per_s`` per device. A device runs its shards one after another, in *waves*. Three things bound
the cut:

- the deadline: every wave, plus one shard's time kept in reserve so that one shard lost to a preempted node and
  retried at the very end still finishes in time, must fit in ``deadline_s``;
- the work a preemption throws away: a shard runs at most ``max_shard_s``, since a retried shard starts over;
- the teacher loads: every shard pays ``shard_overhead_s``, so shards should be as long as the other two bounds
  allow.

With ``w`` waves, a shard may last ``T(w) = min(max_shard_s, deadline_s / (w + 1))`` and label
``S(w) = pairs_per_s · (T(w) − shard_overhead_s)`` rows, so ``ceil(N / (w · S(w)))`` devices label N rows. The
share of the deadline a device spends labelling, ``w / (w + 1) − w · overhead / deadline``, is largest near
``w = sqrt(deadline / overhead) − 1``; :func:`plan_labelling` tries every ``w`` and keeps the fewest devices (then
the fewest device-seconds), and spreads the rows evenly over them, so that every device finishes together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from relevance.config import LabelFanOutConfig


@dataclass(frozen=True)
class LabellingPlan:
    pool_rows: int
    pairs_per_s: float  # one device
    shard_overhead_s: float
    deadline_s: float
    devices: int  # label pods at once: the labelling ParallelFor's parallelism
    shard_rows: int
    shards: int
    waves: int  # shards one device runs one after another
    shard_s: float  # one full shard: overhead + shard_rows / pairs_per_s
    wall_s: float  # waves × shard_s: the fan-out's wall time without failures
    device_s: float  # what is paid for: devices × wall_s

    @property
    def fits(self) -> bool:
        """Whether every wave and one retried shard finish within the deadline."""
        return self.wall_s + self.shard_s <= self.deadline_s + 1e-9

    @property
    def labelling_fraction(self) -> float:
        """The share of paid device time spent labelling rather than starting pods and loading the teacher."""
        return self.pool_rows / self.pairs_per_s / self.device_s

    def summary(self) -> str:
        def duration(seconds: float) -> str:
            return f"{seconds:,.0f} s" if seconds < 120 else f"{seconds / 60:,.1f} min"

        return (f"{self.pool_rows:,} pairs at {self.pairs_per_s:,.0f} pairs/s per device: {self.devices} device(s) "
                f"× {self.waves} wave(s) of {self.shard_rows:,}-row shards ({self.shards} shards, "
                f"{duration(self.shard_s)} each), {duration(self.wall_s)} wall, "
                f"{self.device_s / 3600:,.2f} device-hours, {self.labelling_fraction:.0%} of it labelling; "
                f"deadline {duration(self.deadline_s)} with one shard's retry in reserve: "
                + ("met" if self.fits else "MISSED"))

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits, "labelling_fraction": self.labelling_fraction}


def _layout(pool_rows: int, pairs_per_s: float, overhead_s: float, deadline_s: float, devices: int,
            max_shard_rows: int) -> LabellingPlan:
    """``devices`` devices, shards of at most ``max_shard_rows``, rows spread evenly over the waves."""
    waves = math.ceil(math.ceil(pool_rows / max_shard_rows) / devices)
    devices = min(devices, math.ceil(pool_rows / max_shard_rows))  # never more devices than shards
    shard_rows = math.ceil(pool_rows / (devices * waves))
    shard_s = overhead_s + shard_rows / pairs_per_s
    return LabellingPlan(pool_rows=pool_rows, pairs_per_s=pairs_per_s, shard_overhead_s=overhead_s,
                         deadline_s=deadline_s, devices=devices, shard_rows=shard_rows,
                         shards=math.ceil(pool_rows / shard_rows), waves=waves, shard_s=shard_s,
                         wall_s=waves * shard_s, device_s=devices * waves * shard_s)


def plan_labelling(pool_rows: int, pairs_per_s: float, shard_overhead_s: float, deadline_s: float,
                   max_shard_s: float, max_devices: int, strict: bool = False) -> LabellingPlan:
    """The fewest devices (at most ``max_devices``) that label ``pool_rows`` within the deadline, and the shard
    size that gets them there.

    When no count up to ``max_devices`` meets the deadline (a pool larger than planned for, at run time), the
    plan uses up to ``max_devices`` with the shortest wall time and says so (``plan.fits`` is False); with
    ``strict`` (compiling a pipeline) that is a ValueError naming the devices the deadline needs."""
    for name, value in (("pool_rows", pool_rows), ("max_devices", max_devices)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("pairs_per_s", pairs_per_s), ("deadline_s", deadline_s), ("max_shard_s", max_shard_s)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if not 0 < shard_overhead_s < max_shard_s:
        raise ValueError(f"shard_overhead_s (starting a pod, loading the teacher) must be > 0 and below "
                         f"max_shard_s ({max_shard_s:g} s), so that a shard has time to label something; got "
                         f"{shard_overhead_s!r}")
    candidates = []
    for waves in range(1, _MAX_WAVES + 1):
        shard_limit_s = min(max_shard_s, deadline_s / (waves + 1))
        max_shard_rows = math.floor(pairs_per_s * (shard_limit_s - shard_overhead_s))
        if max_shard_rows < 1:
            break  # shorter shards than this only load the teacher
        needed = math.ceil(pool_rows / (waves * max_shard_rows))
        candidates.append(_layout(pool_rows, pairs_per_s, shard_overhead_s, deadline_s,
                                  min(needed, max_devices), max_shard_rows))
        if needed == 1:
            break  # one device already: more waves only cut shorter shards, so more teacher loads
    if not candidates:
        raise ValueError(f"no shard fits: a shard may last min(max_shard_s, deadline_s / 2) = "
                         f"{min(max_shard_s, deadline_s / 2):g} s (half the deadline is kept for one retry), and "
                         f"starting it and loading the teacher alone takes {shard_overhead_s:g} s")
    fitting = [plan for plan in candidates if plan.fits]
    if fitting:
        return min(fitting, key=lambda plan: (plan.devices, plan.device_s, plan.waves))
    best = min(candidates, key=lambda plan: (plan.wall_s, plan.device_s))
    if strict:
        unbounded = plan_labelling(pool_rows, pairs_per_s, shard_overhead_s, deadline_s, max_shard_s, pool_rows)
        needed = (f"it needs {unbounded.devices} devices" if unbounded.fits
                  else "no number of devices meets it (each device still needs a whole shard plus a retry)")
        raise ValueError(
            f"labelling {pool_rows:,} pairs at {pairs_per_s:,.0f} pairs/s per device in {deadline_s:,.0f} s "
            f"(one retried shard included): {needed}; at most {max_devices} allowed take {best.wall_s:,.0f} s "
            f"+ {best.shard_s:,.0f} s in reserve. Raise cluster.labeling.max_devices or deadline_s, or measure a "
            f"faster device (python -m benchmarks.labelling_cost)")
    return best


def pairs_per_s_from_flops(parameters: float, tokens_per_pair: float, peak_flops: float, mfu: float) -> float:
    """An estimated labelling rate where nothing has been measured: a forward pass costs about 2 FLOPs per
    parameter per token (Kaplan et al., 2020, "Scaling Laws for Neural Language Models"), and the device sustains
    ``mfu`` of its ``peak_flops``."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    if min(parameters, tokens_per_pair, peak_flops) <= 0:
        raise ValueError(f"parameters, tokens_per_pair and peak_flops must be > 0, got {parameters!r}, "
                         f"{tokens_per_pair!r}, {peak_flops!r}")
    return mfu * peak_flops / (2 * parameters * tokens_per_pair)


def plan_for(capacity: LabelFanOutConfig, pool_rows: int | None = None, max_devices: int | None = None,
             strict: bool = False) -> LabellingPlan:
    """The plan for a run config's ``cluster.labeling``: for ``expected_pool_rows`` when the pipeline is compiled
    (``strict``: the deadline must be met within ``max_devices``), for the pool's actual rows and the compiled
    parallelism when the pool has been built."""
    return plan_labelling(capacity.expected_pool_rows if pool_rows is None else pool_rows,
                          capacity.pairs_per_s_per_device, capacity.shard_overhead_s, capacity.deadline_s,
                          capacity.max_shard_s, capacity.max_devices if max_devices is None else max_devices,
                          strict=strict)


# A bound on the search only: past sqrt(deadline / overhead) waves, more of them lose (see the module docstring).
_MAX_WAVES = 10_000
