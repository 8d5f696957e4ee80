"""Tower distillation: the student's bi-encoder tuned on the teacher's soft labels, so its embeddings learn what
the teacher knows about relevance (the two-stage recipe: towers first, then the MLP on the tuned towers).

The frozen all-MiniLM-L6-v2 was trained for general semantic similarity; the student's MLP can only combine
what its vectors already separate. Here the tower (shared weights for queries and items, as the frozen student
reads; or, with ``shared: false``, a query tower of its own beside it) is fine-tuned so that, within each query's
pool candidates, the cosine of query and item ranks the items as the teacher does: a listwise KL between
softmax(teacher's expected grade / τ_teacher) and softmax(cosine / τ) over the candidates (RocketQAv2's and
Pinterest's listwise distillation of a cross-encoder into a bi-encoder). The tuned tower is a Hugging Face model
directory: named as ``student.encoder`` (a separate query tower, in its ``query/`` folder, as
``student.query_encoder``) every later step reads it, and since they key vectors by the encoder's weight
fingerprint, the tuned vectors are a new version beside the frozen ones, never in their place.

Memory does not grow with the pool: texts are tokenized once into memory-mapped token tables (a row per query and
per item, relevance.student.pairstore.EmbeddingTable holding token ids instead of vectors), and the labels are
read a shard at a time into query buckets on disk (:class:`QueryGroups`: 12 bytes a pair), an epoch holding one
bucket. The order of the query groups is a function of (seed, epoch) alone, so a killed run resumes at the batch
it had reached (relevance.models.training) and ends as an uninterrupted one. Not built yet: the end-to-end
variant (towers and MLP trained together on the KL to the teacher).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from relevance.common.files import atomic_directory, atomic_write, atomic_write_json, sha256_of_files
from relevance.common.runtime import (autocast, device, progress_bar, resolve_precision, seed_everything,
                                      set_threads)
from relevance.config.ml import TowerConfig
from relevance.data.schema import DataContractError, prob_columns
from relevance.models import training
from relevance.models.backbones import resolve_backbone
from relevance.models.training import Hooks, LoopState, Schedule
from relevance.student.distillation import Chunks
from relevance.student.encoder import QUERY_TOWER_DIR, TOWER_MANIFEST, sentence_vectors  # noqa: F401 (theirs)
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


def _batch_tokens(table: EmbeddingTable, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of ``rows``, cut to the longest of them (less padding, less compute)."""
    block = np.asarray(table.vectors[rows])
    lengths = block[:, 0]
    width = max(1, int(lengths.max()))
    ids = torch.from_numpy(np.ascontiguousarray(block[:, 1:width + 1]).astype(np.int64))
    mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]).long()
    return ids, mask


class TowerModel(nn.Module):
    """The query/item towers (mean pooling, L2 normalisation: relevance.student.encoder.BiEncoder): one shared
    ``encoder``, or ``separate``: the queries' ``query_encoder`` beside it, both from the same weights."""

    def __init__(self, path: str, separate: bool = False):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(path)
        self.query_encoder = AutoModel.from_pretrained(path) if separate else None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, query: bool = False) -> torch.Tensor:
        encoder = self.query_encoder if query and self.query_encoder is not None else self.encoder
        return sentence_vectors(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


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


PAIR = np.dtype([("query_row", "<i4"), ("item_row", "<i4"), ("grade", "<f4")])
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


def _padded(groups: list[tuple[int, np.ndarray, np.ndarray]], width: int) -> tuple:
    """(query rows [B], item rows [B, width], valid [B, width], targets [B, width]) of ``groups``."""
    items = np.zeros((len(groups), width), dtype=np.int64)
    valid = np.zeros((len(groups), width), dtype=bool)
    targets = np.zeros((len(groups), width), dtype=np.float32)
    for row, (_, members, grades) in enumerate(groups):
        items[row, :len(members)], valid[row, :len(members)], targets[row, :len(members)] = members, True, grades
    return np.array([g[0] for g in groups], dtype=np.int64), items, valid, targets


class QueryGroups:
    """Training batches of whole query groups: (query rows [B], item rows [B, C], valid [B, C], targets [B, C]).
    A label shard is a row range of the pool, so a query's candidates can lie in several shards (on Home Depot
    most do). :meth:`build` makes one pass over the shards and appends each pair (query row, item row, the
    teacher's expected grade Σ k·p_k) to its query's bucket file: a query's candidates meet in one bucket, which
    holds about one shard's pairs (12 bytes each), all an epoch holds in memory. Epoch e visits the buckets in an
    order fixed by (seed, e); in a bucket the queries are shuffled and each keeps up to ``candidates_per_query``
    of its items (drawn by (seed, e)); a query needs two items to rank."""

    def __init__(self, directory: Path, query_table: EmbeddingTable, item_table: EmbeddingTable,
                 config: TowerConfig):
        self.directory, self.query_table, self.item_table, self.config = directory, query_table, item_table, config
        self.meta = json.loads((directory / "buckets.json").read_text())

    @classmethod
    def build(cls, directory: Path, chunks: Chunks, query_table: EmbeddingTable, item_table: EmbeddingTable,
              num_grades: int, config: TowerConfig) -> "QueryGroups":
        fingerprint = hashlib.sha256("|".join([*(source for source, _ in chunks), query_table.fingerprint,
                                               item_table.fingerprint, str(num_grades)]).encode()).hexdigest()[:16]
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
                        pairs = np.empty(len(frame), dtype=PAIR)
                        pairs["query_row"] = query_table.rows(frame["query_id"], "query id")
                        pairs["item_row"] = item_table.rows(frame["item_id"], "item id")
                        pairs["grade"] = frame[prob_columns(num_grades)].to_numpy(np.float64) @ grades
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
                atomic_write_json(tmp / "buckets.json", {"fingerprint": fingerprint, "rows": rows.tolist()})
        return cls(directory, query_table, item_table, config)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def _groups(self, bucket: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray, np.ndarray]]:
        pairs = np.fromfile(self.directory / f"bucket-{bucket:05d}.bin", dtype=PAIR)
        order = np.argsort(pairs["query_row"], kind="stable")
        bounds = np.flatnonzero(np.diff(pairs["query_row"][order])) + 1
        groups = []
        for members in np.split(order, bounds) if len(order) else []:
            if len(members) < 2:
                continue
            if len(members) > self.config.candidates_per_query:
                members = rng.choice(members, self.config.candidates_per_query, replace=False)
            chosen = pairs[members]
            groups.append((int(chosen["query_row"][0]), chosen["item_row"].astype(np.int64), chosen["grade"]))
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


def _group_loss(model: TowerModel, batch: tuple, query_table: EmbeddingTable, item_table: EmbeddingTable,
                precision: str, config: TowerConfig) -> torch.Tensor:
    """:func:`listwise_kl` of one batch of query groups under ``model``."""
    queries, items, valid, targets = batch
    dev = next(model.parameters()).device
    q_ids, q_mask = (t.to(dev) for t in _batch_tokens(query_table, queries))
    i_ids, i_mask = (t.to(dev) for t in _batch_tokens(item_table, items[valid]))  # row by row, as index_put
    with autocast(precision, dev):
        q = model(q_ids, q_mask, query=True)
        i = model(i_ids, i_mask)
    valid_t = torch.from_numpy(valid).to(dev)
    grid = torch.zeros(*valid.shape, q.shape[1], dtype=i.dtype, device=dev).index_put((valid_t,), i)
    return listwise_kl(q.float(), grid.float(), valid_t, torch.from_numpy(targets).to(dev), config.temperature,
                       config.teacher_temperature)


def _valid_loss(model: TowerModel, valid: "_ValidGroups", precision: str, config: TowerConfig) -> float:
    """The mean listwise KL over valid's judged lists (each list weighs one)."""
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in valid:
            total += float(_group_loss(model, batch, valid.query_table, valid.item_table, precision, config)) * len(batch[0])
            count += len(batch[0])
    return total / count


class _TowerRun(Hooks):
    def __init__(self, model: TowerModel, optimizer, source: QueryGroups, valid: tuple, config: TowerConfig,
                 precision: str, key: str, log):
        self.model, self.optimizer, self.source, self.valid = model, optimizer, source, valid
        self.config, self.precision, self.key, self.log = config, precision, key, log
        self.device = next(model.parameters()).device
        self.path, self.progress, self.what = None, None, "towers"  # what: the logs' name (query_tower reuses this)

    def fit(self, checkpoint: Path) -> LoopState:
        """Train from ``checkpoint`` (or afresh) to the end, with a progress bar: the best state is the model's."""
        state = self.resume(checkpoint)
        schedule = Schedule(epochs=self.config.epochs, patience=self.config.early_stopping_patience,
                            checkpoint_every_batches=self.config.checkpoint_every_batches)
        with progress_bar(transient=True) as bar:
            self.progress = (bar, bar.add_task(self.what, total=None))
            return training.train(self, schedule, state)

    def resume(self, path: Path) -> LoopState:
        self.path = path
        if not path.exists():
            return LoopState()
        saved = torch.load(path, weights_only=True, map_location=self.device)
        if saved.get("key") != self.key:
            self.log(f"{self.what}: {path} is of other labels or settings; starting afresh")
            return LoopState()
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"].cpu())
        if self.device.type == "cuda" and saved.get("cuda_rng"):
            torch.cuda.set_rng_state_all([state.cpu() for state in saved["cuda_rng"]])
        state = LoopState.from_dict(saved["state"])
        self.log(f"{self.what}: resuming from {path} at epoch {state.epoch + 1}, batch {state.batch}")
        return state

    def checkpoint(self, state: LoopState) -> None:
        with atomic_write(self.path) as tmp:
            torch.save({"key": self.key, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "torch_rng": torch.get_rng_state(), "state": state.to_dict(),
                        # dropout draws from the device's generator on a GPU
                        "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []}, tmp)

    def batches(self, epoch: int, start_batch: int):
        return self.source.epoch(epoch, start_batch)

    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def loss(self, batch) -> torch.Tensor:
        return _group_loss(self.model, batch, self.source.query_table, self.source.item_table, self.precision,
                           self.config)

    def train_step(self, batch) -> torch.Tensor:
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return loss

    def after_step(self, state: LoopState, loss) -> None:
        if self.progress is not None:
            bar, task = self.progress
            bar.update(task, advance=1,
                       description=f"{self.what} epoch {state.epoch + 1} loss {float(loss.detach()):.4f}")

    def evaluate(self, state: LoopState) -> dict:
        """The listwise KL on valid's human grades (the same loss, judged lists): what early stopping reads."""
        result = {"epoch": state.epoch + 1, "step": state.step,
                  "valid_loss": _valid_loss(self.model, self.valid, self.precision, self.config)}
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
        groups = [(int(query_table.rows([q], "query id")[0]), item_table.rows(g["item_id"], "item id").astype(np.int64),
                   g["grade"].to_numpy(np.float32)) for q, g in pairs.groupby("query_id", sort=True) if len(g) >= 2]
        if not groups:
            raise DataContractError("tower distillation: valid has no query with two or more judged items: "
                                    "nothing to choose the epoch on")
        self.batches = [_padded(groups[first:first + size], max(len(g[1]) for g in groups[first:first + size]))
                        for first in range(0, len(groups), size)]

    def __iter__(self):
        return iter(self.batches)


def _check_texts(query_ids: list, query_text: pd.Series) -> None:
    unknown = pd.Index(query_ids).difference(query_text.index)
    if len(unknown):
        raise DataContractError(f"tower distillation: {len(unknown)} query id(s) have no text, e.g. {list(unknown[:5])}")


def _check_valid(valid_pairs: pd.DataFrame, query_text: pd.Series, num_grades: int | None) -> None:
    """Valid's judged pairs: the columns, integer grades in 0..K−1 (K unknown: any integer ≥ 0), query texts."""
    missing = [c for c in ("query_id", "item_id", "grade") if c not in valid_pairs.columns]
    if missing:
        raise DataContractError(f"tower distillation: valid pairs lack column(s) {missing}")
    grades = pd.to_numeric(valid_pairs["grade"], errors="coerce")
    top = num_grades - 1 if num_grades is not None else np.inf
    if grades.isna().any() or (grades % 1 != 0).any() or not grades.between(0, top).all():
        raise DataContractError(f"tower distillation: valid grades must be integers 0..{top}")
    _check_texts(list(dict.fromkeys(valid_pairs["query_id"])), query_text)


def _origin(path: str, max_length: int) -> str:
    """What a tower's vectors and tokens come from: its weights and tokenizer files (a model replaced at the same
    path is another origin) and the truncation length."""
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json",
                                                                                   ".txt", ".model"))
    return f"{sha256_of_files(files)}:{max_length}"


def distil_towers(chunks: Chunks, query_text: pd.Series, item_text: pd.Series, valid_pairs: pd.DataFrame,
                  num_grades: int, base: str, max_length: int, config: TowerConfig, out: str | Path,
                  work: str | Path, log=print) -> Path:
    """Tune the shared tower from ``base`` on the teacher's soft labels in ``chunks`` (label shards of query_id,
    item_id, p_0..p_{K-1}); valid's human-graded lists (``valid_pairs``: query_id, item_id, grade) choose the
    epoch. Writes a Hugging Face model directory to ``out`` (with ``towers.json``: base, settings, history) and
    returns it; an ``out`` already written from the same weights, labels, valid lists and settings is returned as
    is. ``work`` holds the token tables, the query buckets and the checkpoint, so a killed run resumes."""
    out, work = Path(out), Path(work)
    path = resolve_backbone(base)
    if Path(path).resolve() == out.resolve():
        raise ValueError(f"tower distillation: the output {out} is the base model itself; write elsewhere")
    if num_grades < 2:
        raise ValueError(f"tower distillation: expected at least 2 grades, got {num_grades}")
    if not chunks:
        raise DataContractError("tower distillation: no label chunks")
    _check_valid(valid_pairs, query_text, num_grades)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    origin = _origin(path, max_length)
    query_ids = list(dict.fromkeys([*(q for _, load in chunks for q in load()["query_id"].unique()),
                                    *valid_pairs["query_id"]]))
    _check_texts(query_ids, query_text)
    query_table = token_table(work / "tokens" / "queries", query_ids, query_text.reindex(query_ids).tolist(),
                              tokenizer, max_length, origin)
    item_table = token_table(work / "tokens" / "items", item_text.index.tolist(), item_text.fillna("").tolist(),
                             tokenizer, max_length, origin)
    groups = QueryGroups.build(work / "buckets", chunks, query_table, item_table, num_grades, config)
    valid_digest = hashlib.sha256(pd.util.hash_pandas_object(valid_pairs[["query_id", "item_id", "grade"]],
                                                             index=False).to_numpy().tobytes()).hexdigest()[:16]
    # How often checkpoints are written does not change what is trained (a resumed run may change it), nor whether
    # `relevance run` tunes them as a step; shared towers keep the key they had before separate ones existed.
    settings = config.model_dump_json(exclude={"checkpoint_every_batches", "enabled", *(["shared"] * config.shared)})
    key = hashlib.sha256(f"{groups.fingerprint}|{origin}|{valid_digest}|{settings}".encode()).hexdigest()[:16]
    if (out / TOWER_MANIFEST).exists() and json.loads((out / TOWER_MANIFEST).read_text()).get("key") == key:
        log(f"towers: {out} already holds these towers")
        return out
    if next(iter(groups.epoch(0)), None) is None:
        raise DataContractError("tower distillation: no query has two or more labelled candidates: nothing to rank")
    set_threads()
    seed_everything(config.seed)
    dev = device()
    model = TowerModel(path, separate=not config.shared).to(dev)
    precision = resolve_precision(config.precision, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    valid = _ValidGroups(valid_pairs, query_table, item_table, config.queries_per_batch)
    base_loss = _valid_loss(model, valid, precision, config)  # what the tuned tower's history reads against
    log(f"towers: the base tower's valid listwise KL {base_loss:.4f}")
    state = _TowerRun(model, optimizer, groups, valid, config, precision, key, log).fit(work / "checkpoint.pt")
    with atomic_directory(out) as tmp:
        model.encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if model.query_encoder is not None:  # separate towers: the item tower at the top, the queries' beneath
            model.query_encoder.save_pretrained(tmp / QUERY_TOWER_DIR)
            tokenizer.save_pretrained(tmp / QUERY_TOWER_DIR)
        atomic_write_json(tmp / TOWER_MANIFEST, {"kind": "towers", "key": key, "base": base, "origin": origin,
                                                 "shared": config.shared,
                                                 "max_length": max_length, "objective": "listwise_kl",
                                                 "config": config.model_dump(), "best": state.best,
                                                 "base_valid_loss": base_loss,
                                                 "history": state.history, "label_sources": len(chunks),
                                                 "steps": state.step})
    (work / "checkpoint.pt").unlink(missing_ok=True)
    return out


def tower_valid_loss(model_path: str | Path, valid_pairs: pd.DataFrame, query_text: pd.Series, item_text: pd.Series,
                     max_length: int, config: TowerConfig, work: str | Path) -> float:
    """The listwise KL on valid's judged lists of the tower at ``model_path``, as :func:`distil_towers`' early
    stopping reads it (e.g. the frozen base's, to read a tuned tower against)."""
    from transformers import AutoTokenizer

    path, work = resolve_backbone(str(model_path)), Path(work)
    _check_valid(valid_pairs, query_text, None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    origin = _origin(path, max_length)
    query_ids = list(dict.fromkeys(valid_pairs["query_id"]))
    query_table = token_table(work / "queries", query_ids, query_text.reindex(query_ids).tolist(),
                              tokenizer, max_length, origin)
    item_table = token_table(work / "items", item_text.index.tolist(), item_text.fillna("").tolist(), tokenizer,
                             max_length, origin)
    dev = device()
    model = TowerModel(path).to(dev)
    valid = _ValidGroups(valid_pairs, query_table, item_table, config.queries_per_batch)
    return _valid_loss(model, valid, resolve_precision(config.precision, dev), config)
