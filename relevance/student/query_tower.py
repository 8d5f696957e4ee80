"""A separate, smaller query tower, distilled into a tower's embedding space (asymmetric towers).

Items are embedded offline, once per tower version; a query is embedded online, inside the request, whenever the
query cache misses. So only the query side has to be cheap. This module shrinks it: a copy of the tower keeping
``layers`` of its transformer layers (evenly spaced, the last kept: DistilBERT's initialisation) is trained so that
its vector of a query matches the full tower's (mean of 1 − cosine). The item vectors, their version in the
feature store and everything materialized stay the full tower's; the student's MLP is then trained on
(small-tower query vectors, full-tower item vectors) with ``student.query_encoder`` naming this model, so what it
learns is what serving computes.

Training texts are the pool's queries (those the teacher labelled; never valid's or test's) and, since a pool holds
only a few thousand distinct queries, short spans of the catalog's titles (query-like texts, ``pseudo_queries``).
Valid's queries choose the epoch. Texts are tokenized once and the full tower's vectors computed once, both into
memory-mapped tables (relevance.student.pairstore.EmbeddingTable), so memory holds a batch, not the texts' vectors;
the order of the batches is a function of (seed, epoch), so a killed run resumes where it stopped
(relevance.models.training) and ends as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from relevance.common.files import atomic_directory, atomic_write_json
from relevance.common.runtime import (autocast, device, progress_bar, resolve_precision, seed_everything,
                                      set_threads)
from relevance.config.ml import QueryTowerConfig
from relevance.data.schema import DataContractError
from relevance.models.backbones import resolve_backbone
from relevance.models.training import LoopState
from relevance.student.encoder import QUERY_TOWER_MANIFEST, BiEncoder, separate_query_tower
from relevance.student.pairstore import EmbeddingTable
from relevance.student.tower_groups import batch_tokens, token_table
from relevance.student.towers import TowerModel, _origin, _TowerRun



def kept_layers(total: int, keep: int) -> list[int]:
    """Which of ``total`` layers a ``keep``-layer copy starts from: evenly spaced, the last one kept."""
    if not 1 <= keep <= total:
        raise ValueError(f"query tower: layers must be between 1 and the tower's {total}, got {keep}")
    return [round((i + 1) * total / keep) - 1 for i in range(keep)]


def pseudo_queries(titles: pd.Series, per_item: int, seed: int, max_words: int = 5) -> list[str]:
    """``per_item`` spans of 1..``max_words`` consecutive words from each title (query-like texts: a catalog
    has far more titles than a pool has distinct queries), drawn by ``seed``; distinct, in a fixed order."""
    rng = np.random.default_rng([seed, 0x9E7])
    out: dict[str, None] = {}
    for title in titles.fillna("").astype(str):
        words = title.split()
        if not words:
            continue
        for _ in range(per_item):
            length = int(rng.integers(1, min(max_words, len(words)) + 1))
            start = int(rng.integers(0, len(words) - length + 1))
            out[" ".join(words[start:start + length]).lower()] = None
    return list(out)


def _shrunk(path: str, layers: int) -> nn.Module:
    model = TowerModel(path)
    encoder = model.encoder
    blocks = encoder.encoder.layer  # a BERT-family encoder: checked by distil_query_tower
    keep = kept_layers(len(blocks), layers)
    encoder.encoder.layer = nn.ModuleList([blocks[k] for k in keep])
    encoder.config.num_hidden_layers = layers
    return model


class _Texts:
    """Training batches: (rows [B]) of the text tables, in an order fixed by (seed, epoch)."""

    def __init__(self, rows: int, config: QueryTowerConfig):
        self.count, self.config = rows, config

    def epoch(self, epoch: int, start_batch: int = 0):
        order = np.random.default_rng([self.config.seed, epoch, 0x0E7]).permutation(self.count)
        if self.config.max_texts_per_epoch is not None:
            order = order[:self.config.max_texts_per_epoch]
        size = self.config.batch_size
        for batch, first in enumerate(range(0, len(order), size)):
            if batch >= start_batch:
                yield np.sort(order[first:first + size])


def _cosine_loss(model: nn.Module, rows: np.ndarray, tokens: EmbeddingTable, targets: EmbeddingTable,
                 precision: str) -> torch.Tensor:
    """Mean 1 − cos(query tower's vector, the full tower's) over ``rows``."""
    dev = next(model.parameters()).device
    ids, mask = (t.to(dev) for t in batch_tokens(tokens, rows))
    with autocast(precision, dev):
        vectors = model(ids, mask)
    target = torch.from_numpy(targets.gather(rows)).to(dev)
    return (1 - (vectors.float() * target).sum(-1)).mean()


class _QueryTowerRun(_TowerRun):
    """The towers' loop (checkpoint, resume, steps, snapshots) with the query tower's batches, loss and
    evaluation."""

    def __init__(self, model, optimizer, texts: _Texts, tables: tuple, valid: tuple, config, precision, key, log):
        super().__init__(model, optimizer, None, None, config, precision, key, log)
        self.what = "query tower"
        self.texts, (self.tokens, self.targets), (self.valid_tokens, self.valid_targets) = texts, tables, valid

    def batches(self, epoch: int, start_batch: int):
        return self.texts.epoch(epoch, start_batch)

    def loss(self, rows) -> torch.Tensor:
        return _cosine_loss(self.model, rows, self.tokens, self.targets, self.precision)

    def evaluate(self, state: LoopState) -> dict:
        result = {"epoch": state.epoch + 1, "step": state.step,
                  "valid_loss": valid_cosine_loss(self.model, self.valid_tokens, self.valid_targets,
                                                  self.config.batch_size, self.precision)}
        self.log(f"query tower: epoch {result['epoch']} valid 1 − cosine {result['valid_loss']:.5f}")
        return result


def valid_cosine_loss(model: nn.Module, tokens: EmbeddingTable, targets: EmbeddingTable, batch_size: int,
                      precision: str) -> float:
    """The mean 1 − cosine over every row of the valid tables (each text weighs one)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for first in range(0, len(tokens.ids), batch_size):
            rows = np.arange(first, min(first + batch_size, len(tokens.ids)))
            total += float(_cosine_loss(model, rows, tokens, targets, precision)) * len(rows)
    return total / len(tokens.ids)


def _tables(directory: Path, texts: list[str], tokenizer, reference: BiEncoder, origin: str, max_length: int):
    """The texts' tokens and the full tower's vectors of them (the targets), each a memory-mapped table."""
    tokens = token_table(directory / "tokens", texts, texts, tokenizer, max_length, origin)
    with progress_bar(transient=True) as bar:
        task = bar.add_task(f"query tower targets ({len(texts)} texts)", total=len(texts))
        targets = EmbeddingTable.build(directory / "targets", texts, texts,
                                       lambda chunk: reference.encode(chunk, on_batch=lambda n: bar.update(task, advance=n)),
                                       reference.fingerprint, "float32")
    return tokens, targets


def _distinct(texts, what: str) -> list[str]:
    cleaned = [t for t in dict.fromkeys(str(t).strip() for t in texts if isinstance(t, str)) if t]
    if not cleaned:
        raise DataContractError(f"query tower: no {what} texts to train on")
    return cleaned


def distil_query_tower(tower: str, train_queries, valid_queries, titles: pd.Series, max_length: int,
                       config: QueryTowerConfig, out: str | Path, work: str | Path, log=print) -> Path:
    """Distil a ``config.layers``-layer query tower from ``tower`` (a model directory or backbone name: the tuned
    towers, or the frozen encoder) on ``train_queries`` plus pseudo-queries from the catalog's ``titles``;
    ``valid_queries`` choose the epoch. Writes a Hugging Face model directory to ``out`` (with
    ``query_tower.json``) to name as ``student.query_encoder`` beside ``student.encoder: tower``, and returns it;
    an ``out`` already written from the same tower, texts and settings is returned as is. ``work`` holds the
    tables and the checkpoint, so a killed run resumes."""
    out, work = Path(out), Path(work)
    item_path = resolve_backbone(tower)
    if Path(item_path).resolve() == out.resolve():
        raise ValueError(f"query tower: the output {out} is the tower itself; write elsewhere")
    # Separate tuned towers: the queries' own tower is the one to shrink and to match (in the item tower's space).
    path = str(separate_query_tower(item_path) or item_path)
    reference = BiEncoder(path, max_length, precision="fp32")
    blocks = getattr(getattr(reference.model, "encoder", None), "layer", None)
    if blocks is None:
        raise ValueError(f"query tower: {path} is not a BERT-family encoder (no encoder.layer to keep layers of)")
    kept_layers(len(blocks), config.layers)  # refused here, before any text is embedded
    train_texts = _distinct(list(train_queries) + pseudo_queries(titles, config.pseudo_queries_per_item,
                                                                 config.seed), "training")
    valid_texts = _distinct(valid_queries, "valid query")
    held = set(valid_texts)
    train_texts = [t for t in train_texts if t not in held]  # valid chooses the epoch: never trained on
    if not train_texts:
        raise DataContractError("query tower: every training text is a valid query: nothing left to train on")
    origin = _origin(path, max_length)
    digest = hashlib.sha256(b"train")  # text by text (a pool's queries may be millions), "\x1e" between
    for text in [*train_texts, "valid", *valid_texts]:
        digest.update(f"\x1e{text}".encode())
    digest = digest.hexdigest()[:16]
    settings = config.model_dump_json(exclude={"checkpoint_every_batches", "enabled"})
    key = hashlib.sha256(f"{origin}|{digest}|{settings}".encode()).hexdigest()[:16]
    if (out / QUERY_TOWER_MANIFEST).exists() and json.loads((out / QUERY_TOWER_MANIFEST).read_text()).get("key") == key:
        log(f"query tower: {out} already holds this query tower")
        return out
    tokenizer = reference.tokenizer
    tables = _tables(work / "train", train_texts, tokenizer, reference, origin, max_length)
    valid = _tables(work / "valid", valid_texts, tokenizer, reference, origin, max_length)
    set_threads()
    seed_everything(config.seed)
    dev = device()
    model = _shrunk(path, config.layers).to(dev)
    precision = resolve_precision(config.precision, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    start_loss = valid_cosine_loss(model, *valid, config.batch_size, precision)
    log(f"query tower: {config.layers} of the tower's layers kept, valid 1 − cosine {start_loss:.5f} before training "
        f"({len(train_texts)} training texts)")
    run = _QueryTowerRun(model, optimizer, _Texts(len(train_texts), config), tables, valid, config, precision, key, log)
    state = run.fit(work / "checkpoint.pt")
    with atomic_directory(out) as tmp:
        model.encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / QUERY_TOWER_MANIFEST, {
            "kind": "query-tower", "key": key, "tower": tower,
            # The space it embeds into: the item tower's (what relevance.student.encoder.check_query_tower reads).
            "tower_fingerprint": BiEncoder(tower, max_length).fingerprint, "trained_from": path,
            "origin": origin, "max_length": max_length, "objective": "1 - cosine to the tower's query vector",
            "layers": config.layers, "kept_layers": kept_layers(reference.model.config.num_hidden_layers,
                                                                config.layers),
            "config": config.model_dump(), "training_texts": len(train_texts), "valid_texts": len(valid_texts),
            "start_valid_loss": start_loss, "best": state.best, "history": state.history, "steps": state.step})
    (work / "checkpoint.pt").unlink(missing_ok=True)
    return out
