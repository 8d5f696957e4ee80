"""Drift statistics of served traffic against the training reference: pure functions on arrays, no I/O.

- :func:`psi`: the population stability index of one feature, on bins cut at the reference's quantiles
  (Siddiqi, 2006; the usual reading: < 0.1 stable, 0.1–0.25 moderate, > 0.25 a significant shift);
- :func:`ks`: the two-sample Kolmogorov–Smirnov statistic and p-value (scipy), for a second opinion that needs
  no bins;
- :func:`nearest_similarity`: each query's cosine similarity to its nearest reference query, the novelty of a
  query embedding; its distribution for served queries against that of held-out reference queries is the
  query-embedding drift.
"""

from __future__ import annotations

import numpy as np

PSI_BINS = 10
PSI_PER_BIN = 20  # fewer bins for small samples: PSI's sampling noise grows as (bins − 1)·(1/n + 1/m)
PSI_FLOOR = 1e-4  # an empty bin's share: PSI is infinite at 0, and one empty bin must not dominate the sum


def _finite(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: expected at least one value, got none")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: expected finite values, got {int((~np.isfinite(array)).sum())} NaN or inf")
    return array


def psi(reference, current, bins: int = PSI_BINS, samples: int | None = None) -> float:
    """PSI of ``current`` against ``reference``: Σ (c − r) · ln(c / r) over the reference's quantile bins.

    Bins are cut at the reference's quantiles (equal shares of the reference); repeated cut points collapse, so
    a feature with few distinct values (a 0/1 flag) gets one bin per value. Small samples get fewer bins (about
    :data:`PSI_PER_BIN` values of the smaller sample per bin, two at least), so that a window of a few hundred
    values does not alert on noise alone. ``samples``: the effective sample size when values come in correlated
    groups (the items of one ranking share their query): the number of groups."""
    reference, current = _finite(reference, "reference"), _finite(current, "current")
    if bins < 2:
        raise ValueError(f"bins: expected at least 2, got {bins}")
    size = min(len(reference), len(current)) if samples is None else samples
    bins = max(2, min(bins, size // PSI_PER_BIN))
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    # Right-closed bins: a value equal to a cut point (the flag's 0) goes with the values below it.
    shares = [np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1) / len(values)
              for values in (reference, current)]
    r, c = (np.maximum(share, PSI_FLOOR) for share in shares)
    return float(np.sum((c - r) * np.log(c / r)))


def ks(reference, current) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample Kolmogorov–Smirnov test (scipy.stats.ks_2samp)."""
    from scipy.stats import ks_2samp

    result = ks_2samp(_finite(reference, "reference"), _finite(current, "current"))
    return float(result.statistic), float(result.pvalue)


def nearest_similarity(queries: np.ndarray, reference: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Cosine similarity of each row of ``queries`` to its nearest row of ``reference`` (rows L2-normalised),
    in batches so memory stays at ``batch`` × len(reference) floats."""
    queries, reference = np.asarray(queries, dtype=np.float32), np.asarray(reference, dtype=np.float32)
    if queries.ndim != 2 or reference.ndim != 2 or queries.shape[1] != reference.shape[1] or not len(reference):
        raise ValueError(f"expected [n, d] queries and a non-empty [m, d] reference, got {queries.shape} and "
                         f"{reference.shape}")
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), batch):
        out[start:start + batch] = (queries[start:start + batch] @ reference.T).max(axis=1)
    return out
