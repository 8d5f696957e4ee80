"""Distillation as a run step: the student trained on the teacher's soft labels of the pool (and of the judged
train pairs), next to the same student trained on human labels alone, the baseline it must beat.

The model and its loss are in relevance.student.model. The distilled student trains out of core (relevance.student.pairstore):
the labels are read one shard at a time into a pair store, and batches are assembled from memory-mapped embedding
tables, so its memory does not grow with the pool. This module assembles those inputs and the manifest that makes a
saved student self-describing (its featurizer's settings, the teacher it imitates, the data it saw).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from relevance.config import RunConfig
from relevance.common.console import log
from relevance.data.schema import Dataset, DataContractError, prob_columns
from relevance.student.featurizer import PairFeaturizer, model_manifest

DISTILLED, HUMAN_ONLY = "student", "student_human_only"


_JUDGED: dict[tuple, np.ndarray] = {}


def judged_targets(config: RunConfig, dataset: Dataset, teacher_dir: Path) -> np.ndarray:
    """The teacher's probabilities for the judged train pairs: distillation sees them with both label kinds.

    Kept per (teacher, training data, precision) for the life of the process: a study distilling many students
    from one teacher scores the train split once."""
    from relevance.common.files import read_manifest
    from relevance.teacher.model import Teacher
    from relevance.teacher.model import score_items

    key = (read_manifest(teacher_dir, "teacher")["teacher_version"], dataset.training_data_hash(),
           config.labeling.precision)
    if key not in _JUDGED:
        log("distillation: teacher labels for the judged train pairs")
        teacher = Teacher.load(teacher_dir)
        _JUDGED[key] = score_items(teacher, dataset.split("train"), dataset.query_text,
                                   teacher.item_texts(dataset.items), config.labeling.batch_size,
                                   config.labeling.precision)
    return _JUDGED[key].copy()


def _check_teacher(labels: pd.DataFrame, teacher_version: str) -> None:
    if len(labels) and labels["teacher_version"].iloc[0] != teacher_version:
        raise DataContractError(f"the labels are of {labels['teacher_version'].iloc[0]}, but the teacher is "
                                f"{teacher_version}")


def _labeller_members(labeller, teacher_version: str, teacher_probs: np.ndarray, pairs: pd.DataFrame,
                      pair_features) -> np.ndarray:
    """The labeller ensemble's probabilities for ``pairs``: the teacher's part given, each GBDT predicting."""
    from relevance.student.gbdt import GBDT

    members = []
    for path, kind, version in zip(labeller.member_dirs, labeller.manifest["member_kinds"],
                                   labeller.manifest["member_versions"]):
        if kind == "teacher":
            if version != teacher_version:
                raise DataContractError(f"the labeller's teacher is {version}, the labels are of {teacher_version}")
            members.append(teacher_probs)
        elif kind == "gbdt":
            members.append(GBDT.load(path).predict_proba(pair_features(pairs)))
        else:
            raise ValueError(f"a labeller combines the teacher and GBDTs, not a {kind} ({path})")
    return labeller.combine(members)


def distillation_targets(config: RunConfig, dataset: Dataset, teacher_dir: Path, labels: pd.DataFrame,
                         pair_features=None, labeller=None) -> tuple[pd.DataFrame, np.ndarray]:
    """What a model distils from, in memory (the GBDT distilled from the teacher): the pool's pairs with the
    teacher's labels, then the judged train pairs relabelled by the same teacher, as (pairs, probabilities).

    With ``labeller`` (a relevance.teacher.ensemble.Ensemble whose members are the teacher and GBDTs), the labels are the
    ensemble's: the teacher's part comes from ``labels``, each GBDT predicts on ``pair_features(pairs)``.
    """
    from relevance.common.files import read_manifest

    if labels is None or labels.empty:
        raise DataContractError("distillation needs the teacher's labels of the pool; none were given")
    teacher_version = read_manifest(teacher_dir, "teacher")["teacher_version"]
    _check_teacher(labels, teacher_version)
    pool_p = labels[prob_columns(dataset.num_grades)].to_numpy(np.float32)
    pool_p /= pool_p.sum(1, keepdims=True)
    train = dataset.split("train")
    pairs = pd.concat([labels[["query_id", "item_id"]], train[["query_id", "item_id"]]], ignore_index=True)
    probs = np.concatenate([pool_p, judged_targets(config, dataset, teacher_dir)])
    if labeller is None:
        return pairs, probs
    return pairs, _labeller_members(labeller, teacher_version, probs, pairs, pair_features)


Chunks = list[tuple[str, Callable[[], pd.DataFrame]]]


def _frame_chunks(labels: pd.DataFrame, rows: int) -> Chunks:
    """An in-memory label table as chunks (the scaling study's nested pools), each named by its content: the
    pairs, the teacher version and the probabilities, so that a pair shard left in the work directory by a killed
    run is reused only for the very same labels (a new teacher labelling the same pairs makes new shards)."""
    columns = [c for c in labels.columns if c in ("query_id", "item_id", "teacher_version") or c.startswith("p_")]
    chunks = []
    for start in range(0, len(labels), rows):
        part = labels.iloc[start:start + rows]
        digest = int(pd.util.hash_pandas_object(part[columns], index=False).sum()) & (2**63 - 1)
        chunks.append((f"frame:{start}:{len(part)}:{digest:x}", lambda part=part: part))
    return chunks


def distil_student(config: RunConfig, dataset: Dataset, labels: pd.DataFrame | Chunks, featurizer: PairFeaturizer,
                   work: Path, valid_x: np.ndarray, teacher_version: str, judged_probs: Callable[[], np.ndarray],
                   labeller=None, on_batch=None):
    """The distilled student, out of core: embedding tables and a pair store under ``work`` (kept until the
    student is saved, so a killed run resumes: finished tables and shards are reused, training restarts from
    its last checkpoint), then relevance.student.model.fit_student on batches assembled per step.

    ``labels`` is the labelling as chunks (relevance.labels.labelling.label_chunks) or, for small pools, a table, all of
    ``teacher_version``; ``judged_probs()`` gives the same teacher's labels of the judged train pairs
    (:func:`judged_targets`). Returns (model, metrics, pairs distilled from)."""
    from relevance.student.pairstore import EmbeddingTable, StoreBatches, build_pair_store
    from relevance.common.runtime import progress_bar
    from relevance.student.model import fit_student

    chunks = _frame_chunks(labels, config.labeling.shard_rows) if isinstance(labels, pd.DataFrame) else labels
    if not chunks:
        raise DataContractError("distillation needs the teacher's labels of the pool; none were given")
    query_text, k = dataset.query_text, dataset.num_grades
    train = dataset.split("train")

    def relabelled(load):
        def chunk() -> pd.DataFrame:
            frame = load()
            _check_teacher(frame, teacher_version)
            if labeller is None:
                return frame
            probs = _labeller_members(labeller, teacher_version, frame[prob_columns(k)].to_numpy(np.float32),
                                      frame, lambda pairs: featurizer.pair_features(pairs, query_text))
            return frame.assign(**dict(zip(prob_columns(k), probs.T)))
        return chunk

    def judged() -> pd.DataFrame:
        frame = train[["query_id", "item_id", "grade"]].reset_index(drop=True)
        frame = frame.assign(**dict(zip(prob_columns(k), np.asarray(judged_probs()).T)),
                             teacher_version=teacher_version)
        return relabelled(lambda: frame)()

    sources = [(source, relabelled(load)) for source, load in chunks]
    sources.append((f"judged:{dataset.training_data_hash()}:{teacher_version}", judged))
    if labeller is not None:
        sources = [(f"{source}:{labeller.manifest['ensemble_version']}", load) for source, load in sources]

    # The query table's rows follow the order queries first appear in the labels, so the pairs of a row group (a
    # shuffled sample of one label shard) touch a few runs of rows, not pages all over the table.
    seen: dict[str, None] = {}
    for _, load in chunks:
        seen.update(dict.fromkeys(load()["query_id"]))
    seen.update(dict.fromkeys(train["query_id"]))
    queries = list(seen)
    unknown = pd.Index(queries).difference(query_text.index)
    if len(unknown):
        raise DataContractError(f"the labels name {len(unknown)} query id(s) the dataset does not have, e.g. "
                                f"{list(unknown[:5])}: were they made for another dataset?")
    items = featurizer.item_text.index.tolist()
    dtype = config.student.table_dtype
    with progress_bar() as bar:
        task = bar.add_task("embedding tables (queries, items)", total=len(queries) + len(items))
        query_table = EmbeddingTable.build(work / "tables" / "queries", queries, query_text.reindex(queries).tolist(),
                                           featurizer.query_vectors, featurizer.query_fingerprint, dtype,
                                           on_rows=lambda n: bar.update(task, advance=n))
        item_table = _item_table(work, items, featurizer, dtype, lambda n: bar.update(task, advance=n))

    def lexical(frame: pd.DataFrame) -> np.ndarray:
        return featurizer.lexical(query_text.reindex(frame["query_id"]).tolist(), frame["item_id"].tolist())

    with progress_bar() as bar:
        task = bar.add_task("pair store (lexical features)", total=None)
        store = build_pair_store(work / "pairs", sources, lexical, query_table, item_table, k,
                                 on_rows=lambda n: bar.update(task, advance=n))
    batches = StoreBatches(store, query_table, item_table, config.student.batch_size, config.student.seed,
                           config.student.shuffle_window_shards)
    log(f"distillation: {len(batches)} pairs in {len(batches.meta['shards'])} shards, tables {dtype} "
        f"({len(queries)} queries, {len(items)} items)")
    valid = dataset.split("valid")
    model, metrics = fit_student(batches, valid_x, valid["grade"].to_numpy(), k, config.student, log=log,
                                 checkpoint=work / "checkpoint.pt",
                                 checkpoint_every=config.student.checkpoint_every_batches, on_batch=on_batch)
    return model, metrics, len(batches)


def _item_table(work: Path, items: list[str], featurizer: PairFeaturizer, dtype: str, on_rows):
    from relevance.student.pairstore import EmbeddingTable

    # Embedded by id (the featurizer looks up the item's text, or its stored vector from the feature store); the
    # table's fingerprint covers the texts and the vectors' source, so an edited catalog rebuilds it.
    texts = featurizer.item_text.reindex(items).fillna("").tolist()
    source = f"{featurizer.cache.encoder.fingerprint}:{'store' if featurizer.item_vectors is not None else 'cache'}"
    return EmbeddingTable.build(work / "tables" / "items", items, [f"{i}\x1f{t}" for i, t in zip(items, texts)],
                                lambda keyed: featurizer.item_vectors_for([k.split("\x1f", 1)[0] for k in keyed]),
                                source, dtype, on_rows=on_rows)


def train_students(config: RunConfig, dataset: Dataset, teacher_dir: Path, labels: pd.DataFrame | Chunks | None,
                   outputs: dict[str, Path], featurizer: PairFeaturizer, lineage: dict | None = None,
                   labeller=None) -> dict[str, Path]:
    """Train the students named in ``outputs`` that are not saved yet:

    - ``student``: distilled out of core (:func:`distil_student`) from the teacher's soft labels of the pool
      (``labels``: relevance.labels.labelling.label_chunks, or a table) and of the judged train pairs, or from a
      ``labeller`` ensemble's;
    - ``student_human_only``: the same model on the human train grades alone.
    """
    from relevance.student.model import Student, train_student

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
        out = Path(todo[DISTILLED])
        work = out.parent / f".{out.name}.distill"
        from relevance.common.files import read_manifest

        teacher_version = read_manifest(teacher_dir, "teacher")["teacher_version"]
        model, metrics, rows = distil_student(config, dataset, labels, featurizer, work, valid_x, teacher_version,
                                              lambda: judged_targets(config, dataset, teacher_dir), labeller)
        source = "the teacher" if labeller is None else f"the labeller {labeller.manifest['ensemble_version']}"
        Student(model, {**manifest, "trained_on": f"soft labels of {source} on {rows - len(train)} pool + "
                        f"{len(train)} train pairs", "teacher_version": teacher_version,
                        "labeller": None if labeller is None else labeller.manifest,
                        "distillation_pairs": int(rows), "metrics": metrics}).save(out)
        shutil.rmtree(work, ignore_errors=True)
    return outputs
