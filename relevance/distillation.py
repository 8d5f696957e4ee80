"""Distillation as a run step: the student trained on the teacher's soft labels of the pool (and of the judged
train pairs), next to the same student trained on human labels alone, the baseline it must beat.

The model and its loss are in relevance.student; this module assembles the training set and the manifest that
makes a saved student self-describing (its featurizer's settings, the teacher it imitates, the data it saw).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from relevance.config import RunConfig
from relevance.console import log
from relevance.data.schema import Dataset, DataContractError, prob_columns
from relevance.featurizer import PairFeaturizer, model_manifest

DISTILLED, HUMAN_ONLY = "student", "student_human_only"


def distillation_targets(config: RunConfig, dataset: Dataset, teacher_dir: Path, labels: pd.DataFrame,
                         pair_features=None, labeller=None) -> tuple[pd.DataFrame, np.ndarray]:
    """What a model distils from: the pool's pairs with the teacher's labels, then the judged train pairs
    relabelled by the same teacher (so distillation sees them with both label kinds), as (pairs, probabilities).

    With ``labeller`` (a relevance.ensemble.Ensemble whose members are the teacher and GBDTs), the labels are the
    ensemble's: the teacher's part comes from ``labels``, each GBDT predicts on ``pair_features(pairs)``.
    """
    from relevance.files import read_manifest
    from relevance.teacher import Teacher, score_items

    if labels is None or labels.empty:
        raise DataContractError("distillation needs the teacher's labels of the pool; none were given")
    teacher_version = read_manifest(teacher_dir, "teacher")["teacher_version"]
    if labels["teacher_version"].iloc[0] != teacher_version:
        raise DataContractError(f"the labels are of {labels['teacher_version'].iloc[0]}, but the teacher is "
                                f"{teacher_version}")
    k = dataset.num_grades
    train = dataset.split("train")
    pool_p = labels[prob_columns(k)].to_numpy(np.float32)
    pool_p /= pool_p.sum(1, keepdims=True)
    log("distillation: teacher labels for the judged train pairs")
    teacher = Teacher.load(teacher_dir)
    train_p = score_items(teacher, train, dataset.query_text, teacher.item_texts(dataset.items),
                          config.labeling.batch_size, config.labeling.precision)
    pairs = pd.concat([labels[["query_id", "item_id"]], train[["query_id", "item_id"]]], ignore_index=True)
    probs = np.concatenate([pool_p, train_p])
    if labeller is None:
        return pairs, probs
    from relevance.gbdt import GBDT

    members = []
    for path, kind, version in zip(labeller.member_dirs, labeller.manifest["member_kinds"],
                                   labeller.manifest["member_versions"]):
        if kind == "teacher":
            if version != teacher_version:
                raise DataContractError(f"the labeller's teacher is {version}, the labels are of {teacher_version}")
            members.append(probs)
        elif kind == "gbdt":
            members.append(GBDT.load(path).predict_proba(pair_features(pairs)))
        else:
            raise ValueError(f"a labeller combines the teacher and GBDTs, not a {kind} ({path})")
    return pairs, labeller.combine(members)


def train_students(config: RunConfig, dataset: Dataset, teacher_dir: Path, labels: pd.DataFrame | None,
                   outputs: dict[str, Path], featurizer: PairFeaturizer, lineage: dict | None = None,
                   labeller=None) -> dict[str, Path]:
    """Train the students named in ``outputs`` that are not saved yet:

    - ``student``: distilled from :func:`distillation_targets` (the teacher's soft labels of the pool, as checked
      by relevance.labeling.read_labels, and of the judged train pairs; or a ``labeller`` ensemble's);
    - ``student_human_only``: the same model on the human train grades alone.
    """
    from relevance.student import Student, train_student

    unknown = sorted(set(outputs) - {DISTILLED, HUMAN_ONLY})
    if unknown:
        raise ValueError(f"unknown student output(s) {unknown}; expected {DISTILLED!r} and/or {HUMAN_ONLY!r}")
    todo = {name: path for name, path in outputs.items() if not (Path(path) / "manifest.json").exists()}
    if not todo:
        return outputs  # nothing to train: skip the features too (the scaling study calls this per pool size)
    k = dataset.num_grades
    query_text = dataset.query_text

    def features(pairs: pd.DataFrame) -> np.ndarray:
        return featurizer.pair_features(pairs, query_text)

    train, valid = dataset.split("train"), dataset.split("valid")
    log("student: computing features")
    train_x, valid_x = features(train), features(valid)
    manifest = {"kind": "student", **model_manifest(config, dataset, featurizer, int(train_x.shape[1])),
                "config": config.student.model_dump(), **(lineage or {})}
    if HUMAN_ONLY in todo:
        model, metrics = train_student(train_x, train["grade"].to_numpy(), valid_x, valid["grade"].to_numpy(), k,
                                       config.student, human_only=True, log=log)
        Student(model, {**manifest, "trained_on": "human labels (train split)", "teacher_version": None,
                        "metrics": metrics}).save(todo[HUMAN_ONLY])
    if DISTILLED in todo:
        pairs, p = distillation_targets(config, dataset, teacher_dir, labels, features, labeller)
        pool_rows = len(pairs) - len(train)
        x = np.concatenate([features(pairs.iloc[:pool_rows]), train_x])
        human = np.concatenate([np.full(pool_rows, -1), train["grade"].to_numpy()])
        model, metrics = train_student(x, p, valid_x, valid["grade"].to_numpy(), k, config.student,
                                       train_grades=human, log=log)
        source = "the teacher" if labeller is None else f"the labeller {labeller.manifest['ensemble_version']}"
        Student(model, {**manifest, "trained_on": f"soft labels of {source} on {pool_rows} pool + {len(train_x)} "
                        "train pairs", "teacher_version": labels["teacher_version"].iloc[0],
                        "labeller": None if labeller is None else labeller.manifest,
                        "distillation_pairs": int(len(x)), "metrics": metrics}).save(todo[DISTILLED])
    return outputs
