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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from relevance.config import EvalConfig, RunConfig
from relevance.common.console import log
from relevance.data.schema import DataContractError, Dataset, DatasetInfo, check_references
from relevance.common.files import atomic_write, atomic_write_json, atomic_write_text, read_manifest
from relevance.models.metrics import evaluate_predictions
from relevance.models.saved import saved_kind


@dataclass
class Scored:
    probs: np.ndarray
    seconds: float  # wall time of scoring (features + model), for pairs/s
    uncalibrated: np.ndarray | None = None  # the model's probabilities before its calibration, where it has one

    def pairs_per_s(self) -> float:
        return len(self.probs) / max(self.seconds, 1e-9)


class TeacherScorer:
    kind = "teacher"

    def __init__(self, directory: Path, items: pd.DataFrame, batch_size: int = 128, precision: str = "auto"):
        from relevance.teacher.model import Teacher

        self.teacher = Teacher.load(directory)
        self.manifest = self.teacher.manifest
        self.item_text = self.teacher.item_texts(items)
        self.batch_size, self.precision = batch_size, precision

    def score(self, pairs: pd.DataFrame, query_text: pd.Series) -> Scored:
        from relevance.teacher.model import score_items

        started = time.perf_counter()
        raw = score_items(self.teacher, pairs, query_text, self.item_text, self.batch_size, self.precision,
                          calibrated=False)
        return Scored(self.teacher.calibrator.apply(raw), time.perf_counter() - started, raw)


class FeaturizedScorer:
    """A model over the student's features (a student, or a GBDT baseline), its featurizer rebuilt from what the
    model's manifest recorded."""

    def __init__(self, model, items: pd.DataFrame, cache_dir: Path):
        from relevance.student.featurizer import model_featurizer

        self.model = model
        self.manifest = model.manifest
        self.kind = self.manifest["kind"]
        self.featurizer, same_catalog = model_featurizer(items, self.manifest, cache_dir)
        if not same_catalog:
            warnings.warn("the items file differs from the catalog the model was trained on: its BM25 "
                          "statistics (IDF, average length) shift, and with them the BM25 features", stacklevel=2)

    def score(self, pairs: pd.DataFrame, query_text: pd.Series) -> Scored:
        queries = query_text.reindex(pairs["query_id"]).tolist()
        # Embed new texts before the clock starts: online, items are embedded offline and queries are cached,
        # so the per-pair cost to report is features + model.
        self.featurizer.embeddings(queries, pairs["item_id"].tolist())
        started = time.perf_counter()
        features = self.featurizer.transform(queries, pairs["item_id"])
        probs = self.model.predict_proba(features)
        seconds = time.perf_counter() - started
        return Scored(probs, seconds, self.model.predict_proba(features, calibrated=False))


class EnsembleScorer:
    """A log-linear ensemble of saved models (relevance.teacher.ensemble): each member scores, the ensemble combines."""

    kind = "ensemble"

    def __init__(self, directory: Path, items: pd.DataFrame, cache_dir: Path):
        from relevance.teacher.ensemble import Ensemble

        self.ensemble = Ensemble.load(directory)
        self.manifest = self.ensemble.manifest
        self.members = [load_scorer(path, items, cache_dir) for path in self.ensemble.member_dirs]

    def score(self, pairs: pd.DataFrame, query_text: pd.Series) -> Scored:
        scored = [member.score(pairs, query_text) for member in self.members]
        return Scored(self.ensemble.combine([s.probs for s in scored]), sum(s.seconds for s in scored))


class BundleScorer:
    """A serving bundle (relevance.student.export.export_bundle) scored through the serving path itself: the ONNX query
    encoder, BM25 from the bundle's index, :func:`relevance.student.featurizer.lexical_features` and the student's
    serving graph, one request per query (relevance.student.scoring.OnlineScorer). Item features come from the catalog with embeddings from
    the run's cache (relevance.student.scoring.CatalogItemSource), which is what the feature store is materialized from.
    What a canary serves is what gets compared."""

    kind = "serving-bundle"

    def __init__(self, directory: Path, items: pd.DataFrame, cache_dir: Path):
        from relevance.models.bm25 import lexical_item_texts
        from relevance.config import ServingConfig, TextConfig
        from relevance.student.encoder import BiEncoder, EmbeddingCache
        from relevance.student.featurizer import catalog_hash
        from relevance.student.scoring import CatalogItemSource, OnlineScorer, OnnxStudent, ServingBundle

        bundle = ServingBundle(directory)
        self.manifest = {**bundle.manifest, "kind": self.kind}
        if not {"text", "dataset"} <= set(bundle.manifest):
            raise ValueError(f"{directory}: this bundle does not record how item text was assembled (exported by an "
                             "older version); re-export it with `relevance export`")
        item_text = lexical_item_texts(items, TextConfig.model_validate(bundle.manifest["text"]))
        if catalog_hash(item_text) != bundle.manifest["catalog_hash"]:
            warnings.warn("the items file differs from the catalog the bundle was exported for: its BM25 index "
                          "and the items' features no longer describe the same catalog", stacklevel=2)
        encoder = BiEncoder(bundle.manifest["encoder"], bundle.manifest["encoder_max_length"])
        if encoder.fingerprint != bundle.manifest["encoder_fingerprint"]:
            raise ValueError(f"{directory}: the bundle's item embeddings came from encoder "
                             f"{bundle.manifest['encoder_fingerprint']}, this machine's {bundle.manifest['encoder']} "
                             f"is {encoder.fingerprint}")
        cache = EmbeddingCache(Path(cache_dir), encoder)
        titles = items.set_index("item_id")["title"] if "title" in items.columns else item_text
        source = CatalogItemSource(titles.fillna("").astype(str), item_text,
                                   lambda texts: cache.embed(texts, "item embeddings"), encoder.dimension)
        self.online = OnlineScorer(bundle, source, ServingConfig(),
                                   student=OnnxStudent(bundle.in_process_graph(int8=False)))

    def score(self, pairs: pd.DataFrame, query_text: pd.Series) -> Scored:
        started = time.perf_counter()
        probs = np.zeros((len(pairs), self.manifest["num_grades"]), dtype=np.float32)
        items = pairs["item_id"].to_numpy()
        limit = self.online.config.max_candidates  # a query with more candidates goes as several requests
        for query_id, rows in pairs.groupby("query_id", sort=False).indices.items():
            for start in range(0, len(rows), limit):
                part = rows[start:start + limit]
                prepared = self.online.prepare(query_text[query_id], "", items[part].tolist())
                probs[part] = self.online.student.predict(prepared.student_inputs())
        return Scored(probs, time.perf_counter() - started)


def saved_manifest(directory: str | Path) -> dict:
    """What a saved model or a serving bundle says about itself (its manifest, or the bundle's bundle.json)."""
    from relevance.student.scoring import BUNDLE_MANIFEST, ServingBundle

    if (Path(directory) / BUNDLE_MANIFEST).exists():
        return ServingBundle(directory).manifest
    return read_manifest(Path(directory))


def _featurized(directory: Path, items: pd.DataFrame, cache_dir: Path):
    """A model on the student's features (a student or a GBDT), loaded by the kind its manifest names."""
    import relevance.student.gbdt  # noqa: F401  (registers the kinds load_saved can load)
    import relevance.student.model  # noqa: F401
    from relevance.models.saved import load_saved

    return FeaturizedScorer(load_saved(directory), items, cache_dir)


# How each saved kind is scored (a serving bundle, which has no manifest.json, is told apart first).
_SCORERS = {
    "teacher": lambda directory, items, cache_dir: TeacherScorer(directory, items),
    "student": _featurized,
    "gbdt": _featurized,
    "ensemble": lambda directory, items, cache_dir: EnsembleScorer(directory, items, cache_dir),
}


def load_scorer(directory: str | Path, items: pd.DataFrame, cache_dir: str | Path):
    """One interface over any saved model: a teacher, a student, a GBDT, an ensemble of them, or a serving bundle
    (an exported student, scored the way the server scores it)."""
    from relevance.student.scoring import BUNDLE_MANIFEST

    if (Path(directory) / BUNDLE_MANIFEST).exists():
        return BundleScorer(Path(directory), items, Path(cache_dir))
    kind = saved_kind(directory)
    if kind in _SCORERS:
        return _SCORERS[kind](Path(directory), items, Path(cache_dir))
    raise ValueError(f"{directory}: unknown model kind {kind!r}; expected teacher, student, gbdt or ensemble")


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
    info = info or DatasetInfo.from_dict(scorer.manifest["dataset"])
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
    version = next((scorer.manifest[k] for k in ("teacher_version", "student_version", "gbdt_version",
                                                 "ensemble_version") if scorer.manifest.get(k)), None)
    report.update({"model": str(model_dir), "kind": scorer.kind, "pairs_per_s": scored.pairs_per_s(),
                   "version": version})
    return report


def evaluate_file(model_dir: str | Path, items_path: str | Path, judgments_path: str | Path, out: str | Path,
                  split: str | None = None, cache_dir: str | Path = ".cache/embeddings") -> dict:
    """What `relevance evaluate` runs: a saved model (or a serving bundle) on an items file and a judgments file
    (generic columns, e.g. Home Depot's), only the rows of ``split`` when given; the report is written to ``out``
    as JSON and returned."""
    from relevance.data.generic import load_items, load_judgments
    from relevance.data.schema import validate_items

    manifest = saved_manifest(model_dir)
    items = validate_items(load_items(items_path))
    queries, judged, _ = load_judgments(judgments_path, num_grades=manifest["num_grades"])
    if queries is None:
        raise DataContractError(f"{judgments_path}: needs a 'query' column with the query text")
    if split:
        if "split" not in judged.columns:
            raise DataContractError(f"{judgments_path}: --split {split} given, but the file has no 'split' column")
        judged = judged[judged["split"] == split]
    report = evaluate_directory(model_dir, items, queries, judged, None, EvalConfig(), cache_dir)
    atomic_write_json(out, report)
    return report


def evaluate_models(config: RunConfig, dataset: Dataset, model_dirs: dict[str, Path], out: str | Path,
                    embeddings_dir: str | Path) -> dict:
    """Every saved model and the baselines on the same evaluation split, overall and per locale. Writes the
    report as JSON (``out``), markdown (``out`` with .md) and the confusion matrices (confusion.png beside it)."""
    from relevance.models.bm25 import BM25Index
    from relevance.evaluation.report import markdown_report

    out = Path(out)
    frame = with_locale(dataset.split(config.eval.split), dataset.queries)
    train = dataset.split("train")
    query_text = dataset.query_text
    models: dict[str, dict] = {}
    pairs_per_s: dict[str, float] = {}
    reliability: dict[str, dict] = {}
    for name, directory in model_dirs.items():
        scored = load_scorer(directory, dataset.items, embeddings_dir).score(frame, query_text)
        models[name] = report_block(frame, scored.probs, dataset.info, config.eval)
        pairs_per_s[name] = scored.pairs_per_s()
        if scored.uncalibrated is not None and not np.allclose(scored.uncalibrated, scored.probs):
            # Before and after calibration, overall and per locale: the ECE columns of both blocks.
            models[f"{name} (uncalibrated)"] = report_block(frame, scored.uncalibrated, dataset.info, config.eval)
            reliability[name] = {"uncalibrated": scored.uncalibrated, "calibrated": scored.probs}
    index = BM25Index.for_items(dataset.items, config.text, config.candidates.k1, config.candidates.b)
    train_bm25 = index.score_pairs(query_text.reindex(train["query_id"]), train["item_id"])
    eval_bm25 = index.score_pairs(query_text.reindex(frame["query_id"]), frame["item_id"])
    k = dataset.num_grades
    models["bm25"] = report_block(frame, bm25_probs(train_bm25, train["grade"].to_numpy(), eval_bm25, k),
                                  dataset.info, config.eval, scores=eval_bm25)
    models["majority"] = report_block(frame, majority_probs(train["grade"].to_numpy(), k, len(frame)),
                                      dataset.info, config.eval)
    report = {"split": config.eval.split, "dataset": dataset.info.name, "num_pairs": int(len(frame)),
              "models": models, "pairs_per_s": pairs_per_s,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(out, report)
    matrices = {name: models[name]["overall"]["confusion_matrix"] for name in model_dirs}
    plot_confusion_matrices(matrices, dataset.info.grade_names, out.with_name("confusion.png"))
    plots = ["confusion.png"]
    if reliability:
        plot_reliability_by_locale(reliability, frame, out.with_name("reliability.png"))
        plots.append("reliability.png")
    atomic_write_text(out.with_suffix(".md"), markdown_report(report, *plots))
    log(f"report: {out} and {out.with_suffix('.md')}")
    return report


def plot_reliability_by_locale(reliability: dict[str, dict[str, np.ndarray]], frame: pd.DataFrame,
                               path: Path) -> Path:
    """Reliability diagrams before and after calibration: one row per model, overall then one panel per locale."""
    from relevance.models.calibration import plot_reliability

    grades = frame["grade"].to_numpy()
    locales = sorted(frame["locale"].dropna().unique()) if frame["locale"].nunique() > 1 else []
    panels = {}
    for name, curves in reliability.items():
        for locale in [None, *locales]:
            mask = np.ones(len(frame), bool) if locale is None else (frame["locale"] == locale).to_numpy()
            panels[f"{name}, {locale or 'all locales'}"] = {label: (probs[mask], grades[mask])
                                                            for label, probs in curves.items()}
    with atomic_write(path) as tmp:
        plot_reliability(panels, tmp, columns=1 + len(locales))
    return path


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
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
