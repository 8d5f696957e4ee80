"""Gradient-boosted trees (LightGBM) on the student's own features: the classical baselines a search team builds
first, in every quality report next to BM25, the majority class and the human-only student.

- ``multiclass``: softmax over the K grades (multi_logloss) on the human train labels, early-stopped on valid.
- ``lambdamart``: LambdaMART (Burges, 2010, "From RankNet to LambdaRank to LambdaMART"): trees trained to rank
  each query's items by grade (objective lambdarank), early-stopped on valid nDCG, with settings of its own
  (relevance.config.LambdaMARTConfig: learning rate, leaves, gains, cut-off, patience). A ranking
  score has no probabilities, so an ordinal read-out of the score (multinomial logistic regression fitted on
  train, as for BM25) gives grade probabilities for the classification metrics.
- ``distilled``: multiclass trees on the teacher's soft labels (cross-entropy against the teacher's distribution,
  a custom objective: gradient p − q, diagonal Hessian p(1 − p)), early-stopped on human valid labels.

Every model is calibrated on valid like the teacher and the student (relevance.models.calibration).

Saved layout: model.txt (LightGBM's own text format) and manifest.json (kind "gbdt", the objective, the
featurizer's settings like a student's, the read-out, the calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relevance.config import GBDTConfig
from relevance.models.calibration import fit_calibrator
from relevance.models.saved import SavedModel

OBJECTIVES = ("multiclass", "lambdamart", "distilled")


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _soft_cross_entropy(num_grades: int):
    """LightGBM objective: cross-entropy of softmax(raw scores) against soft targets [N, K] (set on the
    Dataset as its ``targets`` attribute; LightGBM's own label holds the argmax)."""

    def objective(raw: np.ndarray, dataset) -> tuple[np.ndarray, np.ndarray]:
        targets = dataset.targets
        scores = raw.reshape(len(targets), num_grades, order="F") if raw.ndim == 1 else raw
        probs = _softmax(scores)
        grad = probs - targets
        hess = np.maximum(probs * (1.0 - probs), 1e-6)
        return (grad, hess) if raw.ndim == 2 else (grad.ravel(order="F"), hess.ravel(order="F"))

    return objective


@dataclass
class GBDT(SavedModel):
    """A saved-model kind (relevance.models.saved): its version hashes model.txt (the trees up to the best
    iteration); the calibration and the LambdaMART read-out live in the manifest."""

    kind = "gbdt"
    booster: object  # lightgbm.Booster
    manifest: dict

    def scores(self, features: np.ndarray) -> np.ndarray:
        """LambdaMART's ranking score [N] (higher is better)."""
        if self.manifest["objective"] != "lambdamart":
            raise ValueError("scores() is LambdaMART's ranking score; use predict_proba for the other objectives")
        return self.booster.predict(features, num_iteration=self.booster.best_iteration)

    def predict_proba(self, features: np.ndarray, calibrated: bool = True) -> np.ndarray:
        expected = self.manifest["num_features"]
        if features.ndim != 2 or features.shape[1] != expected:
            raise ValueError(f"gbdt expects features of shape [N, {expected}], got {list(features.shape)}")
        objective = self.manifest["objective"]
        raw = self.booster.predict(features, num_iteration=self.booster.best_iteration,
                                   raw_score=objective == "distilled")
        if objective == "lambdamart":
            probs = _readout_probs(self.manifest["readout"], raw, self.num_grades)
        elif objective == "distilled":
            probs = _softmax(raw)
        else:
            probs = raw
        probs = np.asarray(probs, dtype=np.float32)
        return self.calibrator.apply(probs) if calibrated else probs

    def write_files(self, directory: Path) -> list[Path]:
        self.booster.save_model(str(directory / "model.txt"), num_iteration=self.booster.best_iteration)
        return [directory / "model.txt"]

    @classmethod
    def from_files(cls, directory: Path, manifest: dict) -> "GBDT":
        import lightgbm

        return cls(lightgbm.Booster(model_file=str(directory / "model.txt")), manifest)


def _readout_probs(readout: dict, scores: np.ndarray, num_grades: int) -> np.ndarray:
    """Grade probabilities of a multinomial logistic regression on the score (coefficients from :func:`_readout`)."""
    coef, intercept = np.asarray(readout["coef"]), np.asarray(readout["intercept"])
    probs = np.zeros((len(scores), num_grades), dtype=np.float64)
    probs[:, readout["classes"]] = _softmax(np.outer(scores, coef) + intercept)
    return probs


def _readout(scores: np.ndarray, grades: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000).fit(scores[:, None], grades)
    return {"classes": model.classes_.tolist(), "coef": model.coef_[:, 0].tolist(),
            "intercept": model.intercept_.tolist()}


def _groups(query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stable order that puts each query's rows together, and the group sizes LightGBM's ranker needs."""
    order = np.argsort(query_ids, kind="stable")
    _, counts = np.unique(query_ids[order], return_counts=True)
    return order, counts


def train_gbdt(objective: str, train_x: np.ndarray, train_target: np.ndarray, valid_x: np.ndarray,
               valid_grades: np.ndarray, num_grades: int, config: GBDTConfig, manifest: dict,
               train_queries: np.ndarray | None = None, valid_queries: np.ndarray | None = None,
               train_grades: np.ndarray | None = None, log=print, history: dict | None = None) -> GBDT:
    """Fit one GBDT with early stopping on valid.

    ``train_target``: human grades [N] (multiclass, lambdamart) or teacher probabilities [N, K] (distilled).
    LambdaMART needs the query ids of both splits; ``train_grades`` are the human train grades its read-out is
    fitted on. ``manifest``: what the saved model records besides (featurizer settings, lineage). ``history``, if
    given, receives LightGBM's validation metric per boosting round (lightgbm.record_evaluation).
    """
    import lightgbm

    if objective not in OBJECTIVES:
        raise ValueError(f"gbdt objective: expected one of {OBJECTIVES}, got {objective!r}")
    if len(train_x) == 0 or len(valid_x) == 0:
        raise ValueError(f"gbdt: need non-empty train and valid sets, got {len(train_x)} and {len(valid_x)} rows")
    params = {"learning_rate": config.learning_rate, "num_leaves": config.num_leaves,
              "min_child_samples": config.min_child_samples, "feature_fraction": config.feature_fraction,
              "bagging_fraction": config.bagging_fraction, "bagging_freq": 1 if config.bagging_fraction < 1 else 0,
              "lambda_l2": config.lambda_l2, "seed": config.seed, "verbosity": -1, "num_threads": 0,
              "deterministic": True, "force_row_wise": True}
    valid_grades = np.asarray(valid_grades, dtype=np.int64)
    if objective == "lambdamart":
        if train_queries is None or valid_queries is None or train_grades is None:
            raise ValueError("gbdt lambdamart needs the train and valid query ids and the train grades")
        train_order, train_counts = _groups(np.asarray(train_queries))
        valid_order, valid_counts = _groups(np.asarray(valid_queries))
        train_set = lightgbm.Dataset(train_x[train_order], np.asarray(train_target)[train_order], group=train_counts,
                                     free_raw_data=False)
        valid_set = lightgbm.Dataset(valid_x[valid_order], valid_grades[valid_order], group=valid_counts,
                                     reference=train_set)
        ranker = config.lambdamart
        params.update(objective="lambdarank", metric="ndcg", eval_at=[ranker.eval_at],
                      label_gain=[float(2 ** g - 1 if ranker.label_gain == "exponential" else g)
                                  for g in range(num_grades)],
                      learning_rate=ranker.learning_rate, num_leaves=ranker.num_leaves,
                      min_child_samples=ranker.min_child_samples, feature_fraction=ranker.feature_fraction,
                      lambda_l2=ranker.lambda_l2)
    elif objective == "multiclass":
        train_set = lightgbm.Dataset(train_x, np.asarray(train_target, dtype=np.int64), free_raw_data=False)
        valid_set = lightgbm.Dataset(valid_x, valid_grades, reference=train_set)
        params.update(objective="multiclass", num_class=num_grades, metric="multi_logloss")
    else:
        targets = np.asarray(train_target, dtype=np.float64)
        if targets.ndim != 2 or targets.shape[1] != num_grades:
            raise ValueError(f"gbdt distilled: expected teacher probabilities [N, {num_grades}], got "
                             f"{list(targets.shape)}")
        train_set = lightgbm.Dataset(train_x, targets.argmax(1), free_raw_data=False)
        train_set.targets = targets / targets.sum(1, keepdims=True)
        valid_set = lightgbm.Dataset(valid_x, valid_grades, reference=train_set)
        valid_set.targets = np.eye(num_grades)[valid_grades]
        params.update(objective=_soft_cross_entropy(num_grades), num_class=num_grades, metric="None")

    def soft_logloss(raw, dataset):
        probs = _softmax(raw if raw.ndim == 2 else raw.reshape(len(dataset.targets), num_grades, order="F"))
        return "soft_logloss", float(-np.mean(np.sum(dataset.targets * np.log(np.clip(probs, 1e-12, 1)), 1))), False

    patience = config.lambdamart.early_stopping_rounds if objective == "lambdamart" else config.early_stopping_rounds
    booster = lightgbm.train(params, train_set, num_boost_round=config.max_rounds, valid_sets=[valid_set],
                             valid_names=["valid"], feval=soft_logloss if objective == "distilled" else None,
                             callbacks=[lightgbm.early_stopping(patience, verbose=False),
                                        *([lightgbm.record_evaluation(history)] if history is not None else [])])
    valid_metric = {name: float(value) for name, value in booster.best_score["valid"].items()}
    log(f"gbdt {objective}: {booster.best_iteration} trees, valid {valid_metric}")
    model = GBDT(booster, {**manifest, "kind": "gbdt", "objective": objective, "num_grades": num_grades,
                           "num_features": int(train_x.shape[1]), "config": config.model_dump(),
                           "best_iteration": int(booster.best_iteration), "valid": valid_metric})
    if objective == "lambdamart":
        model.manifest["readout"] = _readout(model.scores(train_x), np.asarray(train_grades, dtype=np.int64))
    calibrator = fit_calibrator(model.predict_proba(valid_x, calibrated=False), valid_grades, config.calibration)
    model.manifest["calibration"] = calibrator.to_dict()
    return model


BASELINE_NAMES = {"multiclass": "gbdt_multiclass", "lambdamart": "gbdt_lambdamart", "distilled": "gbdt_distilled"}


def train_baselines(config, dataset, featurizer, outputs: dict[str, Path], teacher_probs=None, log=print
                    ) -> dict[str, Path]:
    """Train the GBDTs named in ``outputs`` (keys of BASELINE_NAMES' values) that are not saved yet, on the
    student's features of the train split (early stopping on valid).

    ``teacher_probs`` (needed for ``gbdt_distilled``): (pairs, probabilities) the trees learn from, e.g. the
    teacher's labels of the pool and of the train pairs.
    """
    from relevance.student.featurizer import model_manifest

    todo = {name: Path(path) for name, path in outputs.items() if not (Path(path) / "manifest.json").exists()}
    if not todo:
        return outputs
    objectives = {name: objective for objective, name in BASELINE_NAMES.items()}
    unknown = sorted(set(todo) - set(objectives))
    if unknown:
        raise ValueError(f"unknown GBDT output(s) {unknown}; expected some of {sorted(objectives)}")
    query_text = dataset.query_text
    train, valid = dataset.split("train"), dataset.split("valid")
    train_x, valid_x = featurizer.pair_features(train, query_text), featurizer.pair_features(valid, query_text)
    base = model_manifest(config, dataset, featurizer, int(train_x.shape[1]))
    for name, out in todo.items():
        objective = objectives[name]
        if objective == "distilled":
            if teacher_probs is None:
                raise ValueError("gbdt_distilled needs the teacher's labels (teacher_probs)")
            pairs, probs = teacher_probs
            model = train_gbdt(objective, featurizer.pair_features(pairs, query_text), probs, valid_x,
                               valid["grade"].to_numpy(), dataset.num_grades, config.gbdt,
                               {**base, "trained_on": f"teacher soft labels on {len(pairs)} pairs"}, log=log)
        else:
            model = train_gbdt(objective, train_x, train["grade"].to_numpy(), valid_x, valid["grade"].to_numpy(),
                               dataset.num_grades, config.gbdt, {**base, "trained_on": "human labels (train split)"},
                               train_queries=train["query_id"].to_numpy(), valid_queries=valid["query_id"].to_numpy(),
                               train_grades=train["grade"].to_numpy(), log=log)
        model.save(out)
    return outputs
