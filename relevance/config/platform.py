"""The platform around the chain: the Great Expectations gate, the Feast feature repo and the MLflow registry."""

from __future__ import annotations

from pydantic import Field

from relevance.config.base import Strict


class ValidationConfig(Strict):
    """The Great Expectations gate in front of training (relevance.platform.validation)."""

    # A prepared dataset directory to measure drift against (e.g. the last run that trained the champion).
    # Without one, the valid and test splits are compared with the train split.
    reference: str | None = None
    # Largest allowed total-variation distance between grade distributions (0: identical, 1: disjoint).
    max_grade_drift: float = Field(0.2, gt=0, le=1)
    # Largest allowed relative change of the mean item-text and query length (in words) against the reference.
    max_length_drift: float = Field(0.5, gt=0)
    # Teacher probability rows must sum to 1 within this tolerance.
    probability_tolerance: float = Field(1e-3, gt=0)
    # The label suite runs on a sample of this many rows spread over every shard (each shard is also checked in
    # full against the data contract as distillation reads it): 30M rows would not fit a pandas-backed suite.
    label_sample_rows: int = Field(200_000, ge=1)


class FeatureStoreConfig(Strict):
    """Feast: where the feature repo's definitions are (feature_store.yaml + *.py; copied next to the data they
    serve). None: the definitions shipped with the package (feature_repo/ in a checkout)."""

    repo: str | None = None


class RegistryConfig(Strict):
    """The MLflow model registry and the gate a new student must pass to become ``challenger``."""

    # None: $MLFLOW_TRACKING_URI if set, else a SQLite file (with file artifacts) under runs/mlflow.
    tracking_uri: str | None = None
    teacher_name: str = "relevance-teacher"
    student_name: str = "relevance-student"
    min_accuracy: float = Field(0.0, ge=0, le=1)
    min_ndcg: float = Field(0.0, ge=0, le=1)  # nDCG@k at the largest k in eval.ks
    # The challenger must beat the champion's nDCG on the same evaluation set by at least this much.
    min_gain_over_champion: float = 0.0
