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
from relevance.featurizer import FEATURE_VERSION, LEXICAL_FEATURES, PairFeaturizer, featurizer_settings

DISTILLED, HUMAN_ONLY = "student", "student_human_only"


def student_manifest(config: RunConfig, dataset: Dataset, featurizer: PairFeaturizer, num_features: int) -> dict:
    """What every saved student records: enough to rebuild its featurizer and trace its training data."""
    encoder = featurizer.cache.encoder
    return {
        "kind": "student", "num_grades": dataset.num_grades, "num_features": num_features,
        "feature_version": FEATURE_VERSION, "lexical_features": list(LEXICAL_FEATURES),
        **featurizer_settings(config),
        "encoder_fingerprint": encoder.fingerprint, "embedding_dim": encoder.dimension,
        "catalog_hash": featurizer.catalog_hash,
        "config": config.student.model_dump(), "dataset": dataset.info.__dict__,
        "train_data_hash": dataset.training_data_hash(),
    }


def train_students(config: RunConfig, dataset: Dataset, teacher_dir: Path, labels: pd.DataFrame | None,
                   outputs: dict[str, Path], featurizer: PairFeaturizer, lineage: dict | None = None
                   ) -> dict[str, Path]:
    """Train the students named in ``outputs`` that are not saved yet:

    - ``student``: distilled from ``labels`` (the teacher's soft labels of the pool, checked by
      relevance.labeling.read_labels) plus the teacher's labels of the judged train pairs, so distillation sees
      those pairs with both label kinds;
    - ``student_human_only``: the same model on the human train grades alone.
    """
    from relevance.student import Student, train_student
    from relevance.files import read_manifest
    from relevance.teacher import Teacher, score_items

    unknown = sorted(set(outputs) - {DISTILLED, HUMAN_ONLY})
    if unknown:
        raise ValueError(f"unknown student output(s) {unknown}; expected {DISTILLED!r} and/or {HUMAN_ONLY!r}")
    todo = {name: path for name, path in outputs.items() if not (Path(path) / "manifest.json").exists()}
    if not todo:
        return outputs  # nothing to train: skip the features too (the scaling study calls this per pool size)
    k = dataset.num_grades
    query_text = dataset.query_text

    def features(pairs: pd.DataFrame) -> np.ndarray:
        return featurizer.transform(query_text.reindex(pairs["query_id"]).tolist(), pairs["item_id"])

    train, valid = dataset.split("train"), dataset.split("valid")
    log("student: computing features")
    train_x, valid_x = features(train), features(valid)
    manifest = {**student_manifest(config, dataset, featurizer, int(train_x.shape[1])), **(lineage or {})}
    if HUMAN_ONLY in todo:
        model, metrics = train_student(train_x, train["grade"].to_numpy(), valid_x, valid["grade"].to_numpy(), k,
                                       config.student, human_only=True, log=log)
        Student(model, {**manifest, "trained_on": "human labels (train split)", "teacher_version": None,
                        "metrics": metrics}).save(todo[HUMAN_ONLY])
    if DISTILLED in todo:
        if labels is None or labels.empty:
            raise DataContractError("distillation needs the teacher's labels of the pool; none were given")
        teacher_version = read_manifest(teacher_dir, "teacher")["teacher_version"]
        if labels["teacher_version"].iloc[0] != teacher_version:
            raise DataContractError(f"the labels are of {labels['teacher_version'].iloc[0]}, but the teacher is "
                                    f"{teacher_version}")
        pool_x = features(labels)
        pool_p = labels[prob_columns(k)].to_numpy(np.float32)
        pool_p /= pool_p.sum(1, keepdims=True)
        log("student: teacher labels for the judged train pairs")
        teacher = Teacher.load(teacher_dir)
        train_p = score_items(teacher, train, query_text, teacher.item_texts(dataset.items),
                              config.labeling.batch_size, config.labeling.precision)
        x = np.concatenate([pool_x, train_x])
        p = np.concatenate([pool_p, train_p])
        human = np.concatenate([np.full(len(pool_x), -1), train["grade"].to_numpy()])
        model, metrics = train_student(x, p, valid_x, valid["grade"].to_numpy(), k, config.student,
                                       train_grades=human, log=log)
        Student(model, {**manifest, "trained_on": f"teacher soft labels on {len(pool_x)} pool + {len(train_x)} "
                        "train pairs", "teacher_version": teacher_version,
                        "distillation_pairs": int(len(x)), "metrics": metrics}).save(todo[DISTILLED])
    return outputs
