"""Scoring saved models on judgments, the baselines, and the quality report.

``load_scorer`` gives one interface over a saved teacher or student directory, so ``relevance evaluate`` can check
either on any judgments file (including one the model never saw). Baselines share the same report: the majority
class, BM25 alone (its score ranks; an ordinal read-out of the score, fitted on train, gives grade probabilities),
and the student trained on human labels only.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from relevance.config import EvalConfig
from relevance.data.schema import DataContractError, DatasetInfo, check_references
from relevance.metrics import evaluate_predictions
from relevance.teacher import read_manifest


@dataclass
class Scored:
    probs: np.ndarray
    seconds: float  # wall time of scoring (features + model), for pairs/s

    def pairs_per_s(self) -> float:
        return len(self.probs) / max(self.seconds, 1e-9)


class TeacherScorer:
    kind = "teacher"

    def __init__(self, directory: Path, items: pd.DataFrame, batch_size: int = 128, precision: str = "auto"):
        from relevance.teacher import Teacher

        self.teacher = Teacher.load(directory)
        self.manifest = self.teacher.manifest
        self.item_text = self.teacher.item_texts(items)
        self.batch_size, self.precision = batch_size, precision

    def score(self, pairs: pd.DataFrame, query_text: pd.Series) -> Scored:
        from relevance.teacher import score_items

        started = time.perf_counter()
        probs = score_items(self.teacher, pairs, query_text, self.item_text, self.batch_size, self.precision)
        return Scored(probs, time.perf_counter() - started)


class StudentScorer:
    kind = "student"

    def __init__(self, directory: Path, items: pd.DataFrame, cache_dir: Path):
        from relevance.student import Student

        self.student = Student.load(directory)
        self.manifest = self.student.manifest
        self.featurizer = build_featurizer(self.manifest, items, cache_dir)

    def score(self, pairs: pd.DataFrame, query_text: pd.Series) -> Scored:
        queries = query_text.reindex(pairs["query_id"]).tolist()
        # Embed new texts before the clock starts: online, items are embedded offline and queries are cached,
        # so the per-pair cost to report is features + MLP.
        self.featurizer.embeddings(queries, pairs["item_id"].tolist())
        started = time.perf_counter()
        probs = self.student.predict_proba(self.featurizer.transform(queries, pairs["item_id"]))
        return Scored(probs, time.perf_counter() - started)


def build_featurizer(manifest: dict, items: pd.DataFrame, cache_dir: Path):
    """The student's offline featurizer, rebuilt from what its manifest recorded (encoder, text, BM25)."""
    from relevance.config import TextConfig
    from relevance.features import build_featurizer as build

    featurizer = build(items, TextConfig.model_validate(manifest["text"]), manifest["encoder"],
                       manifest["encoder_max_length"], manifest["bm25"]["k1"], manifest["bm25"]["b"], cache_dir)
    if manifest.get("catalog_hash") not in (None, featurizer.catalog_hash):
        warnings.warn("the items file differs from the catalog the student was trained on: its BM25 statistics "
                      "(IDF, average length) shift, and with them the student's BM25 features", stacklevel=2)
    return featurizer


def load_scorer(directory: str | Path, items: pd.DataFrame, cache_dir: str | Path):
    manifest = read_manifest(Path(directory))
    if manifest.get("kind") == "teacher":
        return TeacherScorer(Path(directory), items)
    if manifest.get("kind") == "student":
        return StudentScorer(Path(directory), items, Path(cache_dir))
    raise ValueError(f"{directory}: unknown model kind {manifest.get('kind')!r}; expected teacher or student")


def with_locale(judgments: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    """Judgments with the query's locale, the segment every report is broken down by."""
    if "locale" in judgments.columns:
        return judgments
    return judgments.merge(queries[["query_id", "locale"]], on="query_id", how="left")


def report_block(frame: pd.DataFrame, probs: np.ndarray, info: DatasetInfo, config: EvalConfig,
                 scores: np.ndarray | None = None) -> dict:
    raw_scale = (info.raw_score_min, info.raw_score_max) if info.raw_score_min is not None else None
    return evaluate_predictions(frame, probs, info.num_grades, gains=info.ndcg_gains, ks=config.ks,
                                relevance_threshold=config.relevance_threshold, raw_scale=raw_scale, scores=scores)


def majority_probs(train_grades: np.ndarray, num_grades: int, rows: int) -> np.ndarray:
    """The train split's most frequent grade, with certainty (ties in ranking: every item scores the same)."""
    probs = np.zeros((rows, num_grades), dtype=np.float32)
    probs[:, np.bincount(train_grades, minlength=num_grades).argmax()] = 1.0
    return probs


def bm25_probs(train_scores: np.ndarray, train_grades: np.ndarray, scores: np.ndarray,
               num_grades: int) -> np.ndarray:
    """Grade probabilities from the BM25 score alone: multinomial logistic regression on log(1 + score)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000)
    model.fit(np.log1p(train_scores)[:, None], train_grades)
    probs = np.zeros((len(scores), num_grades), dtype=np.float32)
    probs[:, model.classes_] = model.predict_proba(np.log1p(scores)[:, None])
    return probs


def evaluate_directory(model_dir: str | Path, items: pd.DataFrame, queries: pd.DataFrame,
                       judgments: pd.DataFrame, info: DatasetInfo | None, config: EvalConfig,
                       cache_dir: str | Path) -> dict:
    """Evaluate a saved teacher or student on judgments (all rows given): what `relevance evaluate` runs."""
    if judgments.empty:
        raise DataContractError("judgments: no rows to evaluate (is the --split filter right?)")
    scorer = load_scorer(model_dir, items, cache_dir)
    info = info or DatasetInfo(**scorer.manifest["dataset"])
    if info.num_grades != scorer.manifest["num_grades"]:
        raise DataContractError(f"mismatched K: the model predicts {scorer.manifest['num_grades']} grades, the "
                                f"judgments have {info.num_grades}")
    if int(judgments["grade"].max()) >= info.num_grades:
        raise DataContractError(f"judgments: grade {int(judgments['grade'].max())} is out of range for a model "
                                f"with K={info.num_grades}")
    check_references(judgments, "judgments", items, queries)
    frame = with_locale(judgments, queries)
    scored = scorer.score(frame, queries.set_index("query_id")["query"])
    report = report_block(frame, scored.probs, info, config)
    report.update({"model": str(model_dir), "kind": scorer.kind, "pairs_per_s": scored.pairs_per_s(),
                   "version": scorer.manifest.get("teacher_version") or scorer.manifest.get("student_version")})
    return report


def plot_confusion_matrices(matrices: dict[str, list[list[int]]], grade_names: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False)
    for axis, (name, matrix) in zip(axes[0], matrices.items()):
        counts = np.asarray(matrix, dtype=float)
        rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (row, col), value in np.ndenumerate(counts):
            axis.text(col, row, f"{int(value)}", ha="center", va="center",
                      color="white" if rates[row, col] > 0.5 else "black", fontsize=8)
        ticks = range(len(grade_names))
        axis.set_xticks(ticks, grade_names, rotation=45, ha="right", fontsize=7)
        axis.set_yticks(ticks, grade_names, fontsize=7)
        axis.set_xlabel("predicted grade")
        axis.set_ylabel("human grade")
        axis.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
