"""The unlabelled pool the teacher labels: logged impressions plus BM25 top-K candidates of the queries nobody
judged, minus every judged pair and every pair of a valid/test query.

Evaluation queries never reach the student through teacher labels: a pair is dropped when its query is a
valid/test query by id or by normalised text, since a source may give one query two ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from relevance.bm25 import BM25Index
from relevance.config import RunConfig
from relevance.console import log
from relevance.data.schema import Dataset, DataContractError
from relevance.files import atomic_write


def bm25_candidates(index: BM25Index, queries: pd.DataFrame, top_k: int, exclude: pd.DataFrame | None = None,
                    on_query=None) -> pd.DataFrame:
    """The top-K items for each query (query_id, query columns), minus pairs in ``exclude`` (judged pairs)."""
    rows: list[tuple[str, str, float]] = []
    for query_id, query in zip(queries["query_id"], queries["query"]):
        ids, scores = index.top_k(query, top_k)
        rows.extend(zip([query_id] * len(ids), ids, scores.astype(float)))
        if on_query:
            on_query()
    candidates = pd.DataFrame(rows, columns=["query_id", "item_id", "bm25"])
    if exclude is not None and len(candidates):
        judged = pd.MultiIndex.from_frame(exclude[["query_id", "item_id"]])
        keep = ~pd.MultiIndex.from_frame(candidates[["query_id", "item_id"]]).isin(judged)
        candidates = candidates[keep]
    return candidates.reset_index(drop=True)


def build_pool(config: RunConfig, dataset: Dataset, out: str | Path) -> Path:
    """Impressions plus BM25 top-K for every query without judgments, deduplicated against judged pairs, written
    to ``out`` (parquet, row groups of one label shard each)."""
    from relevance.runtime import progress_bar

    out = Path(out)
    judged = dataset.judgments[["query_id", "item_id"]]
    candidate_queries = ~dataset.queries["query_id"].isin(judged["query_id"])
    if config.candidates.include_train_queries:  # e.g. ESCI and WANDS, where every query is judged
        candidate_queries |= dataset.queries["query_id"].isin(dataset.split("train")["query_id"])
    unjudged = dataset.queries[candidate_queries]
    parts = []
    if config.candidates.include_impressions and dataset.impressions is not None:
        parts.append(dataset.impressions[["query_id", "item_id"]])
    if config.candidates.top_k > 0 and len(unjudged):
        index = BM25Index.for_items(dataset.items, config.text, config.candidates.k1, config.candidates.b)
        with progress_bar() as bar:
            task = bar.add_task(f"BM25 top-{config.candidates.top_k}", total=len(unjudged))
            candidates = bm25_candidates(index, unjudged, config.candidates.top_k, exclude=judged,
                                         on_query=lambda: bar.update(task, advance=1))
        parts.append(candidates[["query_id", "item_id"]])
    if not parts:
        raise DataContractError("the unlabelled pool is empty: no impressions and no unjudged queries for BM25")
    pool = pd.concat(parts, ignore_index=True).drop_duplicates(["query_id", "item_id"])
    pool = pool[~pd.MultiIndex.from_frame(pool).isin(pd.MultiIndex.from_frame(judged))]
    held_out = held_out_query_mask(pool, dataset)
    if held_out.any():
        log(f"pool: dropped {int(held_out.sum())} pair(s) of valid/test queries (same id or same text), so "
            "evaluation queries never reach the student through teacher labels")
    pool = pool[~held_out].reset_index(drop=True)
    if pool.empty:
        raise DataContractError("the unlabelled pool is empty after removing judged pairs and held-out queries")
    with atomic_write(out) as tmp:
        pool.to_parquet(tmp, index=False, row_group_size=config.labeling.shard_rows)
    log(f"pool: {len(pool)} unlabelled pairs over {pool['query_id'].nunique()} queries "
        f"({len(pool) / max(len(dataset.split('train')), 1):.1f}× the train split) → {out}")
    return out


def held_out_query_mask(pairs: pd.DataFrame, dataset: Dataset) -> np.ndarray:
    """Rows whose query is a valid/test query, by id or by normalised text (a source may give one query two ids)."""
    from relevance.data.splits import normalize_query

    held = dataset.judgments.loc[dataset.judgments["split"].isin(["valid", "test"]), "query_id"].unique()
    text = dataset.query_text.map(normalize_query)
    held_texts = set(text.reindex(held).dropna())
    return pairs["query_id"].isin(held).to_numpy() | text.reindex(pairs["query_id"]).isin(held_texts).to_numpy()
