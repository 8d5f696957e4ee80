"""Query-level train/valid/test splits by a stable hash, so that a query never straddles two splits."""

from __future__ import annotations

import hashlib
import re

import pandas as pd

_SPACES = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    return _SPACES.sub(" ", str(text).strip().lower())


def split_of(query: str, valid_fraction: float = 0.1, test_fraction: float = 0.2, salt: str = "") -> str:
    """The split of one query: a pure function of its normalised text, stable across runs and machines."""
    digest = hashlib.sha1((salt + normalize_query(query)).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
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
