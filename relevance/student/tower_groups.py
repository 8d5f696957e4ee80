"""What tower training reads (relevance.student.towers, relevance.student.end_to_end, relevance.student.query_tower):
texts tokenized once into memory-mapped token tables, and the teacher's labels as query groups in on-disk buckets.

Memory does not grow with the pool: a token table is a relevance.student.pairstore.EmbeddingTable holding token ids
instead of vectors (a row per query and per item), and the labels are read a shard at a time into query buckets on
disk (:class:`QueryGroups`: 12 bytes a pair), an epoch holding one bucket. The order of the query groups is a
function of (seed, epoch) alone, so a killed run resumes at the batch it had reached and ends as an uninterrupted
one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from relevance.common.files import atomic_directory, atomic_write_json
from relevance.config.ml import TowerConfig
from relevance.data.schema import DataContractError, prob_columns
from relevance.student.distillation import Chunks
from relevance.student.pairstore import EmbeddingTable


def token_table(directory: Path, ids: list[str], texts: list[str], tokenizer, max_length: int,
                source: str) -> EmbeddingTable:
    """A row per text: [length, token ids…] as int32, padded to ``max_length`` (tokenized once, memory-mapped;
    rebuilt only when the ids, texts or tokenizer change)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tokenize(chunk: list[str]) -> np.ndarray:
        out = np.full((len(chunk), max_length + 1), pad, dtype=np.int32)
        for row, tokens in enumerate(tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]):
            out[row, 0], out[row, 1:len(tokens) + 1] = len(tokens), tokens
        return out

    return EmbeddingTable.build(directory, ids, texts, tokenize, source, dtype="int32")


def batch_tokens(table: EmbeddingTable, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of ``rows``, cut to the longest of them (less padding, less compute)."""
    block = np.asarray(table.vectors[rows])
    lengths = block[:, 0]
    width = max(1, int(lengths.max()))
    ids = torch.from_numpy(np.ascontiguousarray(block[:, 1:width + 1]).astype(np.int64))
    mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]).long()
    return ids, mask


PAIR = np.dtype([("query_row", "<i4"), ("item_row", "<i4"), ("grade", "<f4")])


def _pair_dtype(num_grades: int) -> np.dtype:
    """A stored pair: :data:`PAIR`, and with ``num_grades`` (end to end) the teacher's K probabilities after it."""
    return PAIR if not num_grades else np.dtype(PAIR.descr + [("p", "<f4", (num_grades,))])


# At most this many bucket files (open at once while they are written): at the seeds' 30M pairs a bucket then holds
# ~120k pairs, 1.4 MB.
MAX_BUCKETS = 256


def _checked(frame: pd.DataFrame, source: str, num_grades: int) -> pd.DataFrame:
    probs = prob_columns(num_grades)
    missing = [c for c in ("query_id", "item_id", *probs) if c not in frame.columns]
    if missing:
        raise DataContractError(f"tower distillation: label chunk {source} lacks column(s) {missing}")
    p = frame[probs].to_numpy(np.float64)
    bad = ~np.isfinite(p).all(1) | (np.abs(p.sum(1) - 1) > 1e-3) | (p < 0).any(1)
    if bad.any():
        first = frame.iloc[int(np.flatnonzero(bad)[0])]
        raise DataContractError(f"tower distillation: label chunk {source}: {int(bad.sum())} row(s) whose "
                                f"p_0..p_{num_grades - 1} are not a distribution (non-finite, negative, or not "
                                f"summing to 1), e.g. query {first['query_id']!r}, item {first['item_id']!r}")
    return frame


def _padded(groups: list[tuple], width: int) -> tuple:
    """(query rows [B], item rows [B, width], valid [B, width], targets [B, width]) of ``groups``, and the teacher's
    probabilities [B, width, K] after them when the groups carry them (end to end)."""
    items = np.zeros((len(groups), width), dtype=np.int64)
    valid = np.zeros((len(groups), width), dtype=bool)
    targets = np.zeros((len(groups), width), dtype=np.float32)
    probs = np.zeros((len(groups), width, groups[0][3].shape[1]), dtype=np.float32) if len(groups[0]) > 3 else None
    for row, (_, members, grades, *rest) in enumerate(groups):
        items[row, :len(members)], valid[row, :len(members)], targets[row, :len(members)] = members, True, grades
        if probs is not None:
            probs[row, :len(members)] = rest[0]
    batch = np.array([g[0] for g in groups], dtype=np.int64), items, valid, targets
    return batch if probs is None else (*batch, probs)


class QueryGroups:
    """Training batches of whole query groups: (query rows [B], item rows [B, C], valid [B, C], targets [B, C]).
    A label shard is a row range of the pool, so a query's candidates can lie in several shards (on Home Depot
    most do). :meth:`build` makes one pass over the shards and appends each pair (query row, item row, the
    teacher's expected grade Σ k·p_k; with ``probs``, its K probabilities too) to its query's bucket file: a query's
    candidates meet in one bucket, which holds about one shard's pairs (12 bytes each, 12 + 4K with ``probs``),
    all an epoch holds in memory. Epoch e visits the buckets in an
    order fixed by (seed, e); in a bucket the queries are shuffled and each keeps up to ``candidates_per_query``
    of its items (drawn by (seed, e)); a query needs two items to rank."""

    def __init__(self, directory: Path, query_table: EmbeddingTable, item_table: EmbeddingTable,
                 config: TowerConfig):
        self.directory, self.query_table, self.item_table, self.config = directory, query_table, item_table, config
        self.meta = json.loads((directory / "buckets.json").read_text())

    @classmethod
    def build(cls, directory: Path, chunks: Chunks, query_table: EmbeddingTable, item_table: EmbeddingTable,
              num_grades: int, config: TowerConfig, probs: bool = False) -> "QueryGroups":
        fingerprint = hashlib.sha256("|".join([*(source for source, _ in chunks), query_table.fingerprint,
                                               item_table.fingerprint, str(num_grades), *(["probs"] * probs)]
                                              ).encode()).hexdigest()[:16]
        dtype = _pair_dtype(num_grades if probs else 0)
        done = directory / "buckets.json"
        if not (done.exists() and json.loads(done.read_text()).get("fingerprint") == fingerprint):
            buckets = max(1, min(len(chunks), MAX_BUCKETS))
            grades = np.arange(num_grades, dtype=np.float64)
            rows = np.zeros(buckets, dtype=np.int64)
            with atomic_directory(directory) as tmp:
                handles = [open(tmp / f"bucket-{b:05d}.bin", "wb") for b in range(buckets)]
                try:
                    for source, load in chunks:
                        frame = _checked(load(), source, num_grades)
                        pairs = np.empty(len(frame), dtype=dtype)
                        pairs["query_row"] = query_table.rows(frame["query_id"], "query id")
                        pairs["item_row"] = item_table.rows(frame["item_id"], "item id")
                        p = frame[prob_columns(num_grades)].to_numpy(np.float64)
                        pairs["grade"] = p @ grades
                        if probs:
                            pairs["p"] = p / p.sum(1, keepdims=True)
                        bucket = pairs["query_row"] % buckets
                        order = np.argsort(bucket, kind="stable")
                        counts = np.bincount(bucket, minlength=buckets)
                        for b, part in enumerate(np.split(pairs[order], np.cumsum(counts)[:-1])):
                            if len(part):
                                handles[b].write(part.tobytes())
                                rows[b] += len(part)
                finally:
                    for handle in handles:
                        handle.close()
                atomic_write_json(tmp / "buckets.json", {"fingerprint": fingerprint, "rows": rows.tolist(),
                                                         "probs": num_grades if probs else 0})
        return cls(directory, query_table, item_table, config)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def _groups(self, bucket: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray, np.ndarray]]:
        pairs = np.fromfile(self.directory / f"bucket-{bucket:05d}.bin", dtype=_pair_dtype(self.meta.get("probs", 0)))
        order = np.argsort(pairs["query_row"], kind="stable")
        bounds = np.flatnonzero(np.diff(pairs["query_row"][order])) + 1
        groups = []
        for members in np.split(order, bounds) if len(order) else []:
            if len(members) < 2:
                continue
            if len(members) > self.config.candidates_per_query:
                members = rng.choice(members, self.config.candidates_per_query, replace=False)
            chosen = pairs[members]
            groups.append((int(chosen["query_row"][0]), chosen["item_row"].astype(np.int64), chosen["grade"],
                           *([chosen["p"]] if self.meta.get("probs") else [])))
        return [groups[i] for i in rng.permutation(len(groups))]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple]:
        rng = np.random.default_rng([self.config.seed, epoch, 0x70E5])
        size, budget = self.config.queries_per_batch, self.config.max_queries_per_epoch
        batch = taken = 0
        for bucket in rng.permutation(len(self.meta["rows"])):
            groups = self._groups(int(bucket), rng)  # drawn even when its batches are skipped: the order holds
            if budget is not None:
                groups = groups[:max(0, budget - taken)]
            taken += len(groups)
            for first in range(0, len(groups), size):
                if batch >= start_batch:
                    yield _padded(groups[first:first + size], self.config.candidates_per_query)
                batch += 1
            if budget is not None and taken >= budget:
                return


class ValidGroups:
    """Valid's judged lists as fixed batches: human grades as the targets, every judged item of a query. A list
    ranks two items or more (``min_items``); a pointwise measure (end to end) reads every judged pair (1)."""

    def __init__(self, pairs: pd.DataFrame, query_table: EmbeddingTable, item_table: EmbeddingTable, size: int,
                 min_items: int = 2):
        self.query_table, self.item_table = query_table, item_table
        groups = [(int(query_table.rows([q], "query id")[0]), item_table.rows(g["item_id"], "item id").astype(np.int64),
                   g["grade"].to_numpy(np.float32)) for q, g in pairs.groupby("query_id", sort=True)
                  if len(g) >= min_items]
        if not groups:
            raise DataContractError(f"tower distillation: valid has no query with {min_items} or more judged "
                                    "item(s): nothing to choose the epoch on")
        self.batches = [_padded(groups[first:first + size], max(len(g[1]) for g in groups[first:first + size]))
                        for first in range(0, len(groups), size)]

    def __iter__(self):
        return iter(self.batches)
