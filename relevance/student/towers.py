"""Tower distillation: the student's bi-encoder tuned on the teacher's soft labels, so its embeddings learn what
the teacher knows about relevance (the two-stage recipe: towers first, then the MLP on the tuned towers).

The frozen all-MiniLM-L6-v2 was trained for general semantic similarity; the student's MLP can only combine
what its vectors already separate. Here one tower (shared weights for queries and items, as the frozen student
reads) is fine-tuned so that, within each query's pool candidates, the cosine of query and item ranks the items
as the teacher does: a listwise KL between softmax(teacher's expected grade / τ_teacher) and
softmax(cosine / τ) over the candidates (as in RocketQAv2's and Pinterest's listwise distillation of a
cross-encoder into a bi-encoder). The tuned tower is saved as a Hugging Face model directory: naming it as
``student.encoder`` makes every later step (embedding cache, pair store, feature store, export) read it, and
since they key vectors by the encoder's weight fingerprint, the tuned vectors are a new version beside the frozen
ones, never in their place.

Memory does not grow with the pool: texts are tokenized once into memory-mapped token tables (a row per query and
per item, relevance.student.pairstore.EmbeddingTable holding token ids instead of vectors), and the labels are
read a shard at a time. The order of the query groups is a function of (seed, epoch) alone, so a killed run
resumes at the batch it had reached (relevance.models.training) and ends as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from relevance.common.files import atomic_directory, atomic_write, atomic_write_json
from relevance.common.runtime import autocast, progress_bar, resolve_precision, seed_everything, set_threads
from relevance.config.ml import TowerConfig
from relevance.data.schema import DataContractError, prob_columns
from relevance.models import training
from relevance.models.backbones import resolve_backbone
from relevance.models.pooling import pool_hidden
from relevance.models.training import Hooks, LoopState, Schedule
from relevance.student.pairstore import EmbeddingTable

Chunks = list[tuple[str, Callable[[], pd.DataFrame]]]
TOWER_MANIFEST = "towers.json"


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


def _batch_tokens(table: EmbeddingTable, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of ``rows``, cut to the longest of them (less padding, less compute)."""
    block = np.asarray(table.vectors[rows])
    lengths = block[:, 0]
    width = max(1, int(lengths.max()))
    ids = torch.from_numpy(np.ascontiguousarray(block[:, 1:width + 1]).astype(np.int64))
    mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]).long()
    return ids, mask


class TowerModel(nn.Module):
    """The shared query/item tower: mean pooling and L2 normalisation, as relevance.student.encoder.BiEncoder."""

    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(path)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return nn.functional.normalize(pool_hidden(hidden.float(), mask, "mean"), dim=-1)


def listwise_kl(query: torch.Tensor, items: torch.Tensor, valid: torch.Tensor, targets: torch.Tensor,
                temperature: float, teacher_temperature: float) -> torch.Tensor:
    """Mean over queries of KL(softmax(targets / τ_teacher) ‖ softmax(cos / τ)) over each query's candidates.

    ``query`` [B, d], ``items`` [B, C, d] (unit vectors), ``valid`` [B, C] (False: padding), ``targets`` [B, C]
    (the teacher's expected grades, or human grades)."""
    scores = torch.einsum("bd,bcd->bc", query, items) / temperature
    scores = scores.masked_fill(~valid, float("-inf"))
    target = torch.softmax((targets / teacher_temperature).masked_fill(~valid, float("-inf")), -1)
    log_p = torch.log_softmax(scores, -1)
    terms = torch.where(valid, target * (torch.log(target.clamp_min(1e-12)) - log_p), torch.zeros_like(log_p))
    return terms.sum(-1).mean()


class QueryGroups:
    """Training batches of query groups: (query rows [B], item rows [B, C], valid [B, C], targets [B, C]).

    Epoch e reads the label chunks in an order fixed by (seed, e), one at a time; within a chunk the queries are
    shuffled and each keeps up to ``candidates`` of its items (drawn at random, again by (seed, e)); a query
    needs two items to rank. Targets are the teacher's expected grades Σ k·p_k."""

    def __init__(self, chunks: Chunks, query_table: EmbeddingTable, item_table: EmbeddingTable, num_grades: int,
                 config: TowerConfig):
        if not chunks:
            raise DataContractError("tower distillation: no label chunks")
        self.chunks, self.query_table, self.item_table = chunks, query_table, item_table
        self.num_grades, self.config = num_grades, config

    @property
    def fingerprint(self) -> str:
        sources = "|".join(source for source, _ in self.chunks)
        return hashlib.sha256(f"{sources}|{self.query_table.fingerprint}|{self.item_table.fingerprint}"
                              .encode()).hexdigest()[:16]

    def _groups(self, frame: pd.DataFrame, rng: np.random.Generator) -> list[tuple[int, np.ndarray, np.ndarray]]:
        grades = frame[prob_columns(self.num_grades)].to_numpy(np.float64) @ np.arange(self.num_grades)
        query_rows = self.query_table.rows(frame["query_id"], "query id")
        item_rows = self.item_table.rows(frame["item_id"], "item id")
        order = np.argsort(query_rows, kind="stable")
        bounds = np.flatnonzero(np.diff(query_rows[order])) + 1
        groups = []
        for members in np.split(order, bounds):
            if len(members) < 2:
                continue
            if len(members) > self.config.candidates_per_query:
                members = rng.choice(members, self.config.candidates_per_query, replace=False)
            groups.append((int(query_rows[members[0]]), item_rows[members], grades[members].astype(np.float32)))
        return [groups[i] for i in rng.permutation(len(groups))]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple]:
        rng = np.random.default_rng([self.config.seed, epoch, 0x70E5])
        size, c, batch = self.config.queries_per_batch, self.config.candidates_per_query, 0
        budget = self.config.max_queries_per_epoch
        taken = 0
        for index in rng.permutation(len(self.chunks)):
            groups = self._groups(self.chunks[index][1](), rng)  # drawn even when skipped: the order holds
            if budget is not None:
                groups = groups[:max(0, budget - taken)]
            taken += len(groups)
            for first in range(0, len(groups), size):
                if batch >= start_batch:
                    part = groups[first:first + size]
                    items = np.zeros((len(part), c), dtype=np.int64)
                    valid = np.zeros((len(part), c), dtype=bool)
                    targets = np.zeros((len(part), c), dtype=np.float32)
                    for row, (_, members, grades) in enumerate(part):
                        items[row, :len(members)], valid[row, :len(members)] = members, True
                        targets[row, :len(members)] = grades
                    yield np.array([g[0] for g in part]), items, valid, targets
                batch += 1
            if budget is not None and taken >= budget:
                return


class _TowerRun(Hooks):
    def __init__(self, model: TowerModel, optimizer, source: QueryGroups, valid: tuple, config: TowerConfig,
                 precision: str, key: str, log):
        self.model, self.optimizer, self.source, self.valid = model, optimizer, source, valid
        self.config, self.precision, self.key, self.log = config, precision, key, log
        self.path: Path | None = None
        self.progress = None

    def resume(self, path: Path) -> LoopState:
        self.path = path
        if not path.exists():
            return LoopState()
        saved = torch.load(path, weights_only=True)
        if saved.get("key") != self.key:
            self.log(f"towers: {path} is of other labels or settings; starting afresh")
            return LoopState()
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        state = LoopState.from_dict(saved["state"])
        self.log(f"towers: resuming from {path} at epoch {state.epoch + 1}, batch {state.batch}")
        return state

    def checkpoint(self, state: LoopState) -> None:
        with atomic_write(self.path) as tmp:
            torch.save({"key": self.key, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "torch_rng": torch.get_rng_state(), "state": state.to_dict()}, tmp)

    def batches(self, epoch: int, start_batch: int):
        return self.source.epoch(epoch, start_batch)

    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def _loss(self, queries, items, valid, targets, table_q, table_i, device) -> torch.Tensor:
        q_ids, q_mask = _batch_tokens(table_q, queries)
        flat = items[valid]
        i_ids, i_mask = _batch_tokens(table_i, flat)
        with autocast(self.precision, device):
            q = self.model(q_ids, q_mask)
            i = self.model(i_ids, i_mask)
        valid_t = torch.from_numpy(valid)
        grid = torch.zeros(*valid.shape, q.shape[1], dtype=i.dtype).index_put((valid_t,), i)
        return listwise_kl(q.float(), grid.float(), valid_t, torch.from_numpy(targets), self.config.temperature,
                           self.config.teacher_temperature)

    def train_step(self, batch) -> torch.Tensor:
        queries, items, valid, targets = batch
        loss = self._loss(queries, items, valid, targets, self.source.query_table, self.source.item_table,
                          torch.device("cpu"))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return loss

    def after_step(self, state: LoopState, loss) -> None:
        if self.progress is not None:
            bar, task = self.progress
            bar.update(task, advance=1, description=f"towers epoch {state.epoch + 1} loss {float(loss.detach()):.4f}")

    def evaluate(self, state: LoopState) -> dict:
        """The listwise KL on valid's human grades (the same loss, judged lists): what early stopping reads."""
        self.model.eval()
        losses, weights = [], []
        with torch.no_grad():
            for batch in self.valid:
                queries, items, valid, targets = batch
                losses.append(float(self._loss(queries, items, valid, targets, self.valid.query_table,
                                               self.valid.item_table, torch.device("cpu"))))
                weights.append(len(queries))
        result = {"epoch": state.epoch + 1, "step": state.step,
                  "valid_loss": float(np.average(losses, weights=weights)) if losses else float("nan")}
        self.log(f"towers: epoch {result['epoch']} valid listwise KL {result['valid_loss']:.4f}")
        return result

    def snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot)


class _ValidGroups:
    """Valid's judged lists as fixed batches: human grades as the targets, every judged item of a query."""

    def __init__(self, pairs: pd.DataFrame, query_table: EmbeddingTable, item_table: EmbeddingTable, size: int):
        self.query_table, self.item_table = query_table, item_table
        self.batches = []
        groups = [(query_table.rows([q], "query id")[0], item_table.rows(g["item_id"], "item id"),
                   g["grade"].to_numpy(np.float32)) for q, g in pairs.groupby("query_id", sort=True) if len(g) >= 2]
        for first in range(0, len(groups), size):
            part = groups[first:first + size]
            width = max(len(g[1]) for g in part)
            items = np.zeros((len(part), width), dtype=np.int64)
            valid = np.zeros((len(part), width), dtype=bool)
            targets = np.zeros((len(part), width), dtype=np.float32)
            for row, (_, members, grades) in enumerate(part):
                items[row, :len(members)], valid[row, :len(members)], targets[row, :len(members)] = \
                    members, True, grades
            self.batches.append((np.array([g[0] for g in part]), items, valid, targets))

    def __iter__(self):
        return iter(self.batches)


def distil_towers(chunks: Chunks, query_text: pd.Series, item_text: pd.Series, valid_pairs: pd.DataFrame,
                  num_grades: int, base: str, max_length: int, config: TowerConfig, out: str | Path,
                  work: str | Path, log=print) -> Path:
    """Tune the shared tower from ``base`` on the teacher's soft labels in ``chunks`` (pool shards of query_id,
    item_id, p_0..p_{K-1}); valid's human-graded lists (``valid_pairs``: query_id, item_id, grade) choose the
    epoch. Writes a Hugging Face model directory to ``out`` (with ``towers.json``: base, settings, history) and
    returns it; an ``out`` already written for the same inputs is returned as is. ``work`` holds the token
    tables and the checkpoint, so a killed run resumes."""
    out, work = Path(out), Path(work)
    path = resolve_backbone(base)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    missing = [c for c in ("query_id", "item_id", "grade") if c not in valid_pairs.columns]
    if missing:
        raise DataContractError(f"tower distillation: valid pairs lack column(s) {missing}")
    query_ids = list(dict.fromkeys([*(q for _, load in chunks for q in load()["query_id"].unique()),
                                    *valid_pairs["query_id"]]))
    unknown = pd.Index(query_ids).difference(query_text.index)
    if len(unknown):
        raise DataContractError(f"tower distillation: {len(unknown)} query id(s) have no text, e.g. {list(unknown[:5])}")
    item_ids = item_text.index.tolist()
    source = f"{path}:{max_length}:{tokenizer.vocab_size}"
    query_table = token_table(work / "tokens" / "queries", query_ids, query_text.reindex(query_ids).tolist(),
                              tokenizer, max_length, source)
    item_table = token_table(work / "tokens" / "items", item_ids, item_text.fillna("").tolist(), tokenizer,
                             max_length, source)
    groups = QueryGroups(chunks, query_table, item_table, num_grades, config)
    key = hashlib.sha256(f"{groups.fingerprint}|{base}|{config.model_dump_json()}".encode()).hexdigest()[:16]
    if (out / TOWER_MANIFEST).exists() and json.loads((out / TOWER_MANIFEST).read_text()).get("key") == key:
        log(f"towers: {out} already holds these towers")
        return out
    set_threads()
    seed_everything(config.seed)
    model = TowerModel(path)
    precision = resolve_precision(config.precision, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    valid = _ValidGroups(valid_pairs, query_table, item_table, config.queries_per_batch)
    run = _TowerRun(model, optimizer, groups, valid, config, precision, key, log)
    state = run.resume(work / "checkpoint.pt")
    schedule = Schedule(epochs=config.epochs, patience=config.early_stopping_patience,
                        checkpoint_every_batches=config.checkpoint_every_batches)
    with progress_bar(transient=True) as bar:
        run.progress = (bar, bar.add_task("towers", total=None))
        state = training.train(run, schedule, state)
    history = state.history
    with atomic_directory(out) as tmp:
        model.encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / TOWER_MANIFEST, {"kind": "towers", "key": key, "base": base,
                                                 "max_length": max_length, "objective": "listwise_kl",
                                                 "config": config.model_dump(), "best": state.best,
                                                 "history": history, "label_sources": len(chunks)})
    (work / "checkpoint.pt").unlink(missing_ok=True)
    return out
