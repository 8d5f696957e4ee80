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

What training reads (token tables, query groups in on-disk buckets: memory independent of the pool, an order fixed
by (seed, epoch) so a killed run resumes to the same towers) is relevance.student.tower_groups. With ``objective:
end_to_end`` the towers are trained together with the student's MLP on its own loss: relevance.student.end_to_end.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from relevance.common.files import atomic_directory, atomic_write_json, sha256_of_files
from relevance.common.runtime import (autocast, device, progress_bar, resolve_precision, seed_everything,
                                      set_threads)
from relevance.config.ml import StudentConfig, TowerConfig
from relevance.data.schema import DataContractError
from relevance.models import training
from relevance.models.backbones import resolve_backbone
from relevance.models.training import Hooks, LoopState, Schedule
from relevance.student.distillation import Chunks
from relevance.student.encoder import QUERY_TOWER_DIR, TOWER_MANIFEST, sentence_vectors  # noqa: F401 (theirs)
from relevance.student.pairstore import EmbeddingTable
from relevance.student.tower_groups import QueryGroups, ValidGroups, batch_tokens, token_table


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


def _group_loss(model: TowerModel, batch: tuple, query_table: EmbeddingTable, item_table: EmbeddingTable,
                precision: str, config: TowerConfig) -> torch.Tensor:
    """:func:`listwise_kl` of one batch of query groups under ``model``."""
    queries, items, valid, targets = batch[:4]
    dev = next(model.parameters()).device
    q_ids, q_mask = (t.to(dev) for t in batch_tokens(query_table, queries))
    i_ids, i_mask = (t.to(dev) for t in batch_tokens(item_table, items[valid]))  # row by row, as index_put
    with autocast(precision, dev):
        q = model(q_ids, q_mask, query=True)
        i = model(i_ids, i_mask)
    valid_t = torch.from_numpy(valid).to(dev)
    grid = torch.zeros(*valid.shape, q.shape[1], dtype=i.dtype, device=dev).index_put((valid_t,), i)
    return listwise_kl(q.float(), grid.float(), valid_t, torch.from_numpy(targets).to(dev), config.temperature,
                       config.teacher_temperature)


def _valid_loss(model: TowerModel, valid: ValidGroups, precision: str, config: TowerConfig) -> float:
    """The mean listwise KL over valid's judged lists (each list weighs one)."""
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in valid:
            loss = _group_loss(model, batch, valid.query_table, valid.item_table, precision, config)
            total += float(loss) * len(batch[0])
            count += len(batch[0])
    return total / count


class _TowerRun(Hooks):
    def __init__(self, model: TowerModel, optimizer, source: QueryGroups, valid: ValidGroups, config: TowerConfig,
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
        return training.load_checkpoint(path, self.key, {"model": self.model, "optimizer": self.optimizer}, self.log,
                                        self.what, self.device)

    def checkpoint(self, state: LoopState) -> None:
        # dropout draws from the device's generator on a GPU
        training.save_checkpoint(self.path, self.key, state, {"model": self.model, "optimizer": self.optimizer},
                                 cuda=self.device.type == "cuda")

    def batches(self, epoch: int, start_batch: int):
        return self.source.epoch(epoch, start_batch)

    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def loss(self, batch) -> torch.Tensor:
        return _group_loss(self.model, batch, self.source.query_table, self.source.item_table, self.precision,
                           self.config)

    def clipped(self):
        """The parameters whose gradient norm is clipped (to 1) at each step: the towers'."""
        return self.model.parameters()

    def train_step(self, batch) -> torch.Tensor:
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(list(self.clipped()), 1.0)
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


def _check_texts(query_ids: list, query_text: pd.Series) -> None:
    unknown = pd.Index(query_ids).difference(query_text.index)
    if len(unknown):
        raise DataContractError(f"tower distillation: {len(unknown)} query id(s) have no text, e.g. "
                                f"{list(unknown[:5])}")


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


def _tables(chunks: Chunks, query_text: pd.Series, item_text: pd.Series, valid_pairs: pd.DataFrame, path: str,
            max_length: int, work: Path) -> tuple[EmbeddingTable, EmbeddingTable, str, object]:
    """The queries' and the items' token tables (labels' and valid's queries, the whole catalog), the tokens'
    origin, and the tokenizer."""
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
    return query_table, item_table, origin, tokenizer


def _key(groups: QueryGroups, origin: str, valid_pairs: pd.DataFrame, config: TowerConfig,
         student: StudentConfig | None, lexical) -> str:
    """What the towers are trained from: labels, base weights, valid lists and settings. How often checkpoints are
    written does not change what is trained (a resumed run may change it), nor whether `relevance run` tunes them
    as a step; shared towers, and the listwise objective, keep the key they had before there were others. End to
    end, the recipe's version, the MLP's settings and what its lexical features are computed from count too."""
    valid_digest = hashlib.sha256(pd.util.hash_pandas_object(valid_pairs[["query_id", "item_id", "grade"]],
                                                             index=False).to_numpy().tobytes()).hexdigest()[:16]
    end_to_end = config.objective == "end_to_end"
    settings = config.model_dump_json(exclude={"checkpoint_every_batches", "enabled", *(["shared"] * config.shared),
                                               *(["objective"] * (not end_to_end))})
    if end_to_end:
        from relevance.student.end_to_end import MLP_SETTINGS, RECIPE

        settings += f"|{RECIPE}|{student.model_dump_json(include=MLP_SETTINGS)}|{lexical.lexical_fingerprint}"
    return hashlib.sha256(f"{groups.fingerprint}|{origin}|{valid_digest}|{settings}".encode()).hexdigest()[:16]


def distil_towers(chunks: Chunks, query_text: pd.Series, item_text: pd.Series, valid_pairs: pd.DataFrame,
                  num_grades: int, base: str, max_length: int, config: TowerConfig, out: str | Path,
                  work: str | Path, log=print, student: StudentConfig | None = None, lexical=None) -> Path:
    """Tune the shared tower from ``base`` on the teacher's soft labels in ``chunks`` (label shards of query_id,
    item_id, p_0..p_{K-1}); valid's human-graded lists (``valid_pairs``: query_id, item_id, grade) choose the
    epoch. Writes a Hugging Face model directory to ``out`` (with ``towers.json``: base, settings, history) and
    returns it; an ``out`` already written from the same weights, labels, valid lists and settings is returned as
    is. ``work`` holds the token tables, the query buckets and the checkpoint, so a killed run resumes.

    ``config.objective == "end_to_end"`` needs the student's settings (``student``: its MLP and loss) and the
    featurizer of its lexical features (``lexical``: a relevance.student.featurizer.PairFeaturizer, e.g. built
    ``with_encoder=False``; its lexical_fingerprint keys the run); the MLP is written beside the towers."""
    out, work = Path(out), Path(work)
    end_to_end = config.objective == "end_to_end"
    if end_to_end and (student is None or not hasattr(lexical, "lexical_fingerprint")):
        raise ValueError("tower distillation end to end: give the student's settings and the featurizer of its "
                         "lexical features")
    path = resolve_backbone(base)
    if Path(path).resolve() == out.resolve():
        raise ValueError(f"tower distillation: the output {out} is the base model itself; write elsewhere")
    if num_grades < 2:
        raise ValueError(f"tower distillation: expected at least 2 grades, got {num_grades}")
    if not chunks:
        raise DataContractError("tower distillation: no label chunks")
    _check_valid(valid_pairs, query_text, num_grades)
    query_table, item_table, origin, tokenizer = _tables(chunks, query_text, item_text, valid_pairs, path,
                                                         max_length, work)
    # End to end reads the teacher's whole distribution: buckets of their own, the listwise ones left as they are.
    groups = QueryGroups.build(work / ("buckets-probs" if end_to_end else "buckets"), chunks, query_table,
                               item_table, num_grades, config, probs=end_to_end)
    key = _key(groups, origin, valid_pairs, config, student, lexical)
    if (out / TOWER_MANIFEST).exists() and json.loads((out / TOWER_MANIFEST).read_text()).get("key") == key:
        log(f"towers: {out} already holds these towers")
        return out
    if next(iter(groups.epoch(0)), None) is None:
        raise DataContractError("tower distillation: no query has two or more labelled candidates: nothing to rank")
    set_threads()
    seed_everything(config.seed)
    dev = device()
    precision = resolve_precision(config.precision, dev)
    valid = ValidGroups(valid_pairs, query_table, item_table, config.queries_per_batch)
    if end_to_end:  # imported here: that module builds on this one's model and hooks
        from relevance.student.end_to_end import end_to_end_run, lexical_by_id, save_mlp

        pointwise = ValidGroups(valid_pairs, query_table, item_table, config.queries_per_batch, min_items=1)
        model, run = end_to_end_run(path, not config.shared, num_grades, student, lexical_by_id(lexical, query_text),
                                    groups, pointwise, config, precision, key, log, dev)
    else:
        model = TowerModel(path, separate=not config.shared).to(dev)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
        run = _TowerRun(model, optimizer, groups, valid, config, precision, key, log)
    base_loss = _valid_loss(model, valid, precision, config)  # what the tuned tower's history reads against
    log(f"towers: the base tower's valid listwise KL {base_loss:.4f}")
    state = run.fit(work / "checkpoint.pt")
    # The tuned towers' own ranking by the two-stage towers' measure (end to end, the MLP's loss chose the epoch).
    tuned_listwise = _valid_loss(model, valid, precision, config) if end_to_end else state.best["valid_loss"]
    with atomic_directory(out) as tmp:
        model.encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if model.query_encoder is not None:  # separate towers: the item tower at the top, the queries' beneath
            model.query_encoder.save_pretrained(tmp / QUERY_TOWER_DIR)
            tokenizer.save_pretrained(tmp / QUERY_TOWER_DIR)
        atomic_write_json(tmp / TOWER_MANIFEST, {"kind": "towers", "key": key, "base": base, "origin": origin,
                                                 "shared": config.shared,
                                                 "max_length": max_length, "objective": config.objective,
                                                 "config": config.model_dump(), "best": state.best,
                                                 "base_valid_loss": base_loss, "valid_listwise_kl": tuned_listwise,
                                                 "mlp": save_mlp(model, student, lexical, tmp) if end_to_end
                                                 else None,
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
    valid = ValidGroups(valid_pairs, query_table, item_table, config.queries_per_batch)
    return _valid_loss(model, valid, resolve_precision(config.precision, dev), config)
