"""Tower distillation end to end: the student's towers and its MLP trained together (relevance.student.towers with
``objective: end_to_end``), the issue's alternative to the two-stage recipe (towers on a listwise KL, then the MLP).

The same query groups as the two-stage towers (relevance.student.tower_groups, the teacher's whole distribution kept
per pair); each pair's vector assembled from this step's tower outputs and its lexical features by the featurizer's
one definition (relevance.student.featurizer.pair_blocks), and the student's own loss (the KL to the teacher's
distribution of each pair, relevance.student.model.distillation_loss). Valid's human grades choose the epoch by the
MLP's cross-entropy, as the student's. The MLP is saved beside the towers (:data:`END_TO_END_MLP`), and
:func:`end_to_end_student` makes a student directory of it that every later step reads like any other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import nn

from relevance.common.runtime import autocast
from relevance.config import RunConfig
from relevance.config.ml import StudentConfig
from relevance.data.schema import Dataset
from relevance.models.training import LoopState
from relevance.student.featurizer import LEXICAL_FEATURES, PairFeaturizer, feature_names, model_manifest, pair_blocks
from relevance.student.model import (Student, StudentMLP, calibrate, distillation_loss, feature_statistics,
                                     standardising_std)
from relevance.student.pairstore import EmbeddingTable
from relevance.student.tower_groups import QueryGroups, ValidGroups, batch_tokens
from relevance.student.towers import QUERY_TOWER_DIR, TOWER_MANIFEST, TowerModel, _TowerRun

# The MLP trained end to end with the towers, in the towers' directory (its settings in towers.json's "mlp").
END_TO_END_MLP = "end_to_end_mlp.safetensors"
# Pairs of the first training batches (base towers) that fit the end-to-end MLP's input standardisation.
STANDARDISE_BATCHES = 32
# The student's settings the MLP is trained with (and keyed by).
MLP_SETTINGS = {"hidden", "dropout", "learning_rate", "weight_decay", "temperature"}
# How the recipe trains, in the towers' key: a change that trains other towers from the same inputs moves it (2: the
# gradient norm is clipped on the towers alone, the fresh MLP's large early gradients left out, as the student's).
RECIPE = "end_to_end/2"


Lexical = Callable[[list[str], list[str]], np.ndarray]  # (query ids, item ids) → their lexical features [n, L]


class EndToEndModel(TowerModel):
    """The towers and the student's MLP (relevance.student.model.StudentMLP) over the features the student serves
    on, [q, i, q⊙i, |q−i|, cosine, lexical], assembled from the towers' vectors of this step."""

    def __init__(self, path: str, separate: bool, num_grades: int, student: StudentConfig):
        super().__init__(path, separate)
        num_features = len(feature_names(self.encoder.config.hidden_size))
        self.mlp = StudentMLP(num_features, num_grades, student.hidden, student.dropout)


def lexical_by_id(featurizer: PairFeaturizer, query_text) -> Lexical:
    """``featurizer``'s lexical features of (query id, item id) pairs, checked to be the lexical block
    (relevance.student.featurizer.pair_blocks adds the cosine itself)."""
    width = len(LEXICAL_FEATURES) - 1

    def lexical(query_ids: list[str], item_ids: list[str]) -> np.ndarray:
        out = np.asarray(featurizer.lexical(query_text.reindex(query_ids).tolist(), item_ids), dtype=np.float32)
        if out.shape != (len(item_ids), width):
            raise ValueError(f"end-to-end towers: the lexical features have shape {out.shape}, expected "
                             f"({len(item_ids)}, {width})")
        return out

    return lexical


def pair_features(model: EndToEndModel, batch: tuple, query_table: EmbeddingTable, item_table: EmbeddingTable,
                   lexical: Lexical, precision: str) -> torch.Tensor:
    """The student's vectors [n, F] of the batch's candidates (its valid cells, row by row) under ``model``'s towers."""
    queries, items, valid = batch[:3]
    dev = next(model.parameters()).device
    owner, _ = np.nonzero(valid)
    cells = items[valid]
    q_ids, q_mask = (t.to(dev) for t in batch_tokens(query_table, queries))
    i_ids, i_mask = (t.to(dev) for t in batch_tokens(item_table, cells))
    with autocast(precision, dev):
        q = model(q_ids, q_mask, query=True)
        i = model(i_ids, i_mask)
    lex = lexical(query_table.ids[queries[owner]].tolist(), item_table.ids[cells].tolist())
    blocks = pair_blocks(q.float()[torch.from_numpy(owner).to(dev)], i.float(), torch.from_numpy(lex).to(dev))
    return torch.cat(blocks, 1)


def valid_metrics(model: EndToEndModel, valid: ValidGroups, lexical: Lexical, precision: str) -> dict:
    """The MLP's cross-entropy and accuracy on valid's human grades (``valid`` made with min_items=1: every judged
    pair, each weighing one): the student's early-stopping measure."""
    model.eval()
    loss = correct = count = 0.0
    with torch.no_grad():
        for batch in valid:
            logits = model.mlp.uncalibrated(pair_features(model, batch, valid.query_table, valid.item_table,
                                                           lexical, precision))
            grades = torch.from_numpy(batch[3][batch[2]].astype(np.int64)).to(logits.device)
            loss += float(nn.functional.cross_entropy(logits, grades, reduction="sum"))
            correct += float((logits.argmax(-1) == grades).sum())
            count += len(grades)
    return {"valid_loss": loss / count, "valid_accuracy": correct / count}


class EndToEndRun(_TowerRun):
    """The towers and the MLP on the student's loss per pair; the epoch chosen by the MLP's valid cross-entropy."""

    def __init__(self, *args, lexical: Lexical, student: StudentConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.lexical, self.student, self.what = lexical, student, "end-to-end towers"

    def clipped(self):
        """The towers' parameters: the MLP's gradients stay unclipped, as the student's own training leaves them."""
        return (p for n, p in self.model.named_parameters() if not n.startswith("mlp."))

    def loss(self, batch) -> torch.Tensor:
        features = pair_features(self.model, batch, self.source.query_table, self.source.item_table, self.lexical,
                                  self.precision)
        probs = torch.from_numpy(batch[4][batch[2]]).to(features.device)
        return distillation_loss(self.model.mlp.uncalibrated(features), probs, self.student.temperature)

    def evaluate(self, state: LoopState) -> dict:
        result = {"epoch": state.epoch + 1, "step": state.step,
                  **valid_metrics(self.model, self.valid, self.lexical, self.precision)}
        self.log(f"{self.what}: epoch {result['epoch']} valid cross-entropy {result['valid_loss']:.4f}, "
                 f"accuracy {result['valid_accuracy']:.4f}")
        return result


def standardise(model: EndToEndModel, groups: QueryGroups, lexical: Lexical, precision: str) -> None:
    """Fit the MLP's input standardisation on the first training batches' vectors under the base towers (the
    tuned ones drift from them, as the student's inputs drift between encoders; the MLP's first layer follows)."""
    model.eval()
    with torch.no_grad():
        sample = [pair_features(model, batch, groups.query_table, groups.item_table, lexical, precision).cpu().numpy()
                  for batch in islice(groups.epoch(0), STANDARDISE_BATCHES)]
    mean, std = feature_statistics(sample)
    model.mlp.feature_mean.copy_(torch.from_numpy(mean))
    model.mlp.feature_std.copy_(torch.from_numpy(standardising_std(mean, std)))


def end_to_end_run(path: str, separate: bool, num_grades: int, student: StudentConfig, lexical: Lexical,
                   groups: QueryGroups, valid: ValidGroups, config, precision: str, key: str, log, dev):
    """The model (towers and a fresh MLP, its input standardised on the base towers' vectors) and the training hooks
    of an end-to-end run: the towers at their own rate, the MLP at the student's (it starts from random weights)."""
    model = EndToEndModel(path, separate, num_grades, student).to(dev)
    standardise(model, groups, lexical, precision)
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if not n.startswith("mlp.")],
         "lr": config.learning_rate, "weight_decay": 0.01},
        {"params": model.mlp.parameters(), "lr": student.learning_rate, "weight_decay": student.weight_decay}])
    return model, EndToEndRun(model, optimizer, groups, valid, config, precision, key, log, lexical=lexical,
                              student=student)


def save_mlp(model: EndToEndModel, student: StudentConfig, lexical: PairFeaturizer, directory: Path) -> dict:
    """Write the MLP beside the towers; what towers.json records of it (what :func:`end_to_end_student` checks its
    featurizer against)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.mlp.state_dict().items()}, directory / END_TO_END_MLP)
    return {"file": END_TO_END_MLP, "num_features": int(model.mlp.feature_mean.shape[0]),
            "num_grades": int(model.mlp.calibration_bias.shape[0]), "student": student.model_dump(include=MLP_SETTINGS),
            "lexical_fingerprint": lexical.lexical_fingerprint, "recipe": RECIPE}


def end_to_end_student(config: RunConfig, dataset: Dataset, towers: Path, featurizer: PairFeaturizer, out: Path,
                       teacher_version: str) -> Path:
    """The MLP trained end to end with ``towers`` (relevance.student.towers, ``objective: end_to_end``) as a student
    directory at ``out``, like any other: ``featurizer`` (built from ``config``, which names those towers as
    student.encoder) embeds its valid pairs, its calibration is fitted there as the distilled student's, and its
    manifest says how it was trained. Its valid loss and accuracy are measured again on the featurizer's vectors
    (training read the towers' outputs under its own precision)."""
    from safetensors.torch import load_file

    towers = Path(towers)
    manifest_path = towers / TOWER_MANIFEST
    tower = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    mlp = tower.get("mlp")
    if tower.get("objective") != "end_to_end" or not mlp:
        raise ValueError(f"{towers}: not towers trained end to end (objective {tower.get('objective')!r}): they hold "
                         "no MLP; train the student on them instead")
    # The MLP reads what it was trained on, or nothing: the towers' item and query vectors, the same lexical block.
    if featurizer.cache is None:
        raise ValueError(f"end-to-end student from {towers}: the featurizer has no encoder (built for its lexical "
                         "features only); build it from a config naming the towers")
    query = featurizer.query_cache.encoder.path if featurizer.query_cache is not None else None
    expected_query = None if tower["shared"] else str(towers / QUERY_TOWER_DIR)
    problems = []
    if Path(featurizer.cache.encoder.path).resolve() != towers.resolve():
        problems.append(f"the featurizer embeds items with {featurizer.cache.encoder.path}, not {towers}")
    if featurizer.cache.encoder.max_length != tower["max_length"]:
        problems.append(f"the featurizer truncates at {featurizer.cache.encoder.max_length} tokens, the towers were "
                        f"trained at {tower['max_length']}")
    if (query is None) != (expected_query is None) or (
            query and Path(query).resolve() != Path(expected_query).resolve()):
        problems.append(f"the featurizer embeds queries with {query or 'the item tower'}, the MLP was trained on "
                        f"{expected_query or 'the item tower'}'s query vectors")
    if featurizer.lexical_fingerprint != mlp.get("lexical_fingerprint"):
        problems.append("the featurizer's lexical features (catalog, titles, BM25 settings) are not those the MLP was "
                        "trained with")
    if list(config.student.hidden) != list(mlp["student"]["hidden"]):
        problems.append(f"student.hidden {config.student.hidden} is not the MLP's {mlp['student']['hidden']}")
    if mlp["num_grades"] != dataset.num_grades:
        problems.append(f"the MLP has {mlp['num_grades']} grades, the data {dataset.num_grades}")
    if problems:
        raise ValueError(f"end-to-end student from {towers}: " + "; ".join(problems))
    model = StudentMLP(mlp["num_features"], mlp["num_grades"], mlp["student"]["hidden"], 0.0)
    model.load_state_dict(load_file(towers / mlp["file"]))
    valid = dataset.split("valid")
    vx = torch.from_numpy(featurizer.pair_features(valid, dataset.query_text))
    if vx.shape[1] != mlp["num_features"]:
        raise ValueError(f"end-to-end student: the featurizer makes {vx.shape[1]} features, the MLP reads "
                         f"{mlp['num_features']}")
    vy = torch.from_numpy(valid["grade"].to_numpy(np.int64))
    model.eval()
    with torch.no_grad():
        logits = model.uncalibrated(vx)
        best = {"epoch": tower["best"]["epoch"], "valid_loss": float(torch.nn.functional.cross_entropy(logits, vy)),
                "valid_accuracy": float((logits.argmax(-1) == vy).float().mean())}
    metrics = {"best": best, "history": tower["history"]}
    calibration = calibrate(model, vx, vy, config.student.calibration)
    if calibration is not None:
        metrics["calibration"] = calibration
    # Its initial weights were drawn under the towers' seed: the one the manifest names.
    student = config.student.model_copy(update={**mlp["student"], "seed": tower["config"]["seed"]})
    Student(model, {"kind": "student", **model_manifest(config, dataset, featurizer, mlp["num_features"]),
                    "config": student.model_dump(),
                    "trained_on": f"end to end with its towers ({END_TO_END_MLP} of {towers.name}) on the soft labels "
                                  f"of the teacher on {tower['label_sources']} label shard(s)",
                    "teacher_version": teacher_version, "metrics": metrics}).save(out)
    return out

