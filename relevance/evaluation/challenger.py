"""The run's evaluation, one path for `relevance run` (relevance.chain.Chain.report) and the pipeline's evaluate step
(relevance.platform.evaluate_step.evaluate_challenger, which only brings what lives on the platform: the registry's
champion and the item features read from Feast).

:func:`evaluate_run` scores the run's models (and the champion, when there is one) with the baselines on the same
split (relevance.evaluation.evaluate.evaluate_models); :func:`gate_challenger` adds the GBDT baselines trained on
the student's features and the challenger gate, and writes the HTML page the KFP UI shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from relevance.common.console import log
from relevance.config import RegistryConfig, RunConfig
from relevance.data.schema import Dataset

# Item features by item id (``embedding``, ``title``, ``lexical_text``), e.g. the feature store's offline read
# (relevance.platform.feature_store.item_features_from_store); None: computed from the catalog.
ItemFeatures = Callable[[list[str]], pd.DataFrame | None]


def largest_ndcg(config: RunConfig) -> str:
    """The nDCG the gate compares: at the largest cut-off of ``eval.ks``."""
    return f"ndcg@{max(config.eval.ks)}"


def gate_decision(metrics: dict[str, float], champion: dict[str, float] | None, config: RegistryConfig,
                    ndcg_key: str) -> tuple[bool, str]:
    """Whether a new student may become ``challenger``: thresholds met, and better than the champion (when
    there is one) on the same evaluation set. Returns the decision and a sentence saying why."""
    accuracy, ndcg = metrics["accuracy"], metrics[ndcg_key]
    if accuracy < config.min_accuracy:
        return False, f"accuracy {accuracy:.4f} is below registry.min_accuracy {config.min_accuracy}"
    if ndcg < config.min_ndcg:
        return False, f"{ndcg_key} {ndcg:.4f} is below registry.min_ndcg {config.min_ndcg}"
    if champion is None:
        return True, f"no champion yet; thresholds met (accuracy {accuracy:.4f}, {ndcg_key} {ndcg:.4f})"
    gain = ndcg - champion[ndcg_key]
    if gain <= config.min_gain_over_champion:  # "beats": a tie keeps the champion
        return False, (f"{ndcg_key} {ndcg:.4f} vs champion {champion[ndcg_key]:.4f}: gain {gain:+.4f} is not above "
                       f"registry.min_gain_over_champion {config.min_gain_over_champion}")
    return True, f"{ndcg_key} {ndcg:.4f} vs champion {champion[ndcg_key]:.4f} (gain {gain:+.4f})"


def gbdt_baselines(config: RunConfig, dataset: Dataset, out_dir: str | Path, embeddings_dir: str | Path,
                   item_features: ItemFeatures | None = None) -> dict[str, Path]:
    """The GBDT baselines that learn from human labels alone (``gbdt.objectives`` but ``distilled``, whose targets
    are the teacher's labels), trained on the student's features into ``out_dir``; the items' features from
    ``item_features`` when given (what serving reads), else computed from the catalog."""
    from relevance.student.featurizer import build_featurizer, featurizer_settings
    from relevance.student.gbdt import BASELINE_NAMES, train_baselines

    objectives = [o for o in config.gbdt.objectives if o != "distilled"] if config.gbdt.enabled else []
    if not objectives:
        return {}
    stored = item_features(dataset.items["item_id"].tolist()) if item_features is not None else None
    featurizer = build_featurizer(dataset.items, featurizer_settings(config), Path(embeddings_dir), stored)
    baselines = {BASELINE_NAMES[o]: Path(out_dir) / BASELINE_NAMES[o] for o in objectives}
    return train_baselines(config, dataset, featurizer, baselines, log=log)


def evaluate_run(config: RunConfig, dataset: Dataset, models: dict[str, Path], out: str | Path,
                 embeddings_dir: str | Path, champion: Path | None = None,
                 baselines_dir: str | Path | None = None, item_features: ItemFeatures | None = None) -> dict:
    """The run's saved ``models`` (name → directory, in report order), then the registry's ``champion`` when
    there is one, then (with ``baselines_dir``) the GBDT baselines trained there (:func:`gbdt_baselines`), all
    with the BM25 and majority baselines on the same evaluation split. Writes the report as JSON (``out``),
    markdown and the confusion matrices beside it (relevance.evaluation.evaluate.evaluate_models), and returns
    it."""
    from relevance.evaluation.evaluate import evaluate_models

    models = dict(models)
    if champion is not None:
        models["champion"] = champion
    if baselines_dir is not None:
        models.update(gbdt_baselines(config, dataset, baselines_dir, embeddings_dir, item_features))
    return evaluate_models(config, dataset, models, out, embeddings_dir)


def gate_challenger(config: RunConfig, dataset: Dataset, student_dir: Path, teacher_dir: Path, html_path: Path,
                    work_dir: Path, champion: Path | None = None, item_features: ItemFeatures | None = None) -> dict:
    """The pipeline's evaluate step: student, teacher, the ``champion`` (when there is one) and the GBDT baselines
    (trained in ``work_dir`` on the student's features, items from ``item_features`` when given) on the same
    split (:func:`evaluate_run`); the challenger gate's decision; an HTML report for the KFP UI (``html_path``).
    Returns the flat metrics, the decision and the student's confusion matrix, for the step to log."""
    from relevance.common.files import atomic_write_text
    from relevance.evaluation.report import html_report

    work_dir = Path(work_dir)
    report = evaluate_run(config, dataset, {"student": student_dir, "teacher": teacher_dir},
                          work_dir / "report.json", work_dir / "embeddings", champion, work_dir, item_features)
    plot = (work_dir / "confusion.png").read_bytes()
    ndcg = largest_ndcg(config)
    overall = {name: block["overall"] for name, block in report["models"].items()}
    passed, reason = gate_decision(overall["student"], overall.get("champion"), config.registry, ndcg)
    log(f"challenger gate: {'pass' if passed else 'fail'}: {reason}")
    headline = f"Challenger gate: {'PASS' if passed else 'FAIL'} ({reason})"
    atomic_write_text(html_path, html_report(report, plot, headline))
    metrics = {f"{name}_{metric}".replace("@", "_at_"): float(block[metric])
               for name, block in overall.items() for metric in ("accuracy", "macro_f1", ndcg) if metric in block}
    return {"metrics": metrics, "gate_passed": passed, "gate_reason": reason,
            "grade_names": dataset.info.grade_names, "confusion_matrix": overall["student"]["confusion_matrix"]}
