"""Query-level train/valid/test splits by a stable hash, so that a query never straddles two splits."""

from __future__ import annotations

import hashlib
import re

import pandas as pd

_SPACES = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    return _SPACES.sub(" ", str(text).strip().lower())


def query_bucket(query: str, salt: str = "") -> float:
    """A number in [0, 1) that is a pure function of the query's normalised text (and ``salt``): stable across
    runs and machines, and equal for two ids of one text."""
    digest = hashlib.sha1((salt + normalize_query(query)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(query: str, valid_fraction: float = 0.1, test_fraction: float = 0.2, salt: str = "") -> str:
    """The split of one query: a pure function of its normalised text, stable across runs and machines."""
    bucket = query_bucket(query, salt)
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + valid_fraction:
        return "valid"
    return "train"


def assign_splits(queries: pd.Series, valid_fraction: float = 0.1, test_fraction: float = 0.2,
                  salt: str = "") -> pd.Series:
    if not 0 <= valid_fraction < 1 or not 0 <= test_fraction < 1 or valid_fraction + test_fraction >= 1:
        raise ValueError(f"split fractions must leave room for train; got valid={valid_fraction}, test={test_fraction}")
    cache = {q: split_of(q, valid_fraction, test_fraction, salt) for q in queries.unique()}
    return queries.map(cache)


# Salts of the two slices the judge needs (relevance.data.schema.Dataset): each is its own hash, so neither
# correlates with the train/valid/test split nor with the other.
JUDGE_HOLDOUT_SALT = "judge-holdout:"
JUDGE_CHECK_SALT = "judge-check:"


def in_slice(queries: pd.Series, fraction: float, salt: str) -> pd.Series:
    """Whether each query text falls in the ``fraction`` of the hash space that ``salt`` names (True/False per
    row, same index). A query's slice never changes with the data around it, so a slice chosen today holds the
    same queries after new traffic or new judgments arrive."""
    if not 0 <= fraction < 1:
        raise ValueError(f"a slice fraction must be in [0, 1), got {fraction}")
    cache = {q: query_bucket(q, salt) < fraction for q in queries.unique()}
    return queries.map(cache).astype(bool)
