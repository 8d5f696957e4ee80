"""The pipeline's evaluate step with what lives on the platform: the registry's current champion (MLflow) and the items'
features read from the Feast offline store, handed to the core's one evaluation path
(relevance.evaluation.challenger.gate_challenger). The MLflow adapter (relevance.platform.registry) only records."""

from __future__ import annotations

from pathlib import Path

from relevance.config import RunConfig
from relevance.data.schema import Dataset
from relevance.platform.registry import CHAMPION, Registry


def evaluate_challenger(config: RunConfig, dataset: Dataset, student_dir: Path, teacher_dir: Path,
                        html_path: Path, feature_repo: Path | None = None) -> dict:
    """The pipeline's evaluate step (relevance.evaluation.challenger.gate_challenger) with what lives on the
    platform: the registry's current champion, and the items' features read from ``feature_repo`` (the Feast
    offline store) when given."""
    import tempfile

    from relevance.evaluation.challenger import gate_challenger

    from relevance.common.files import read_manifest
    from relevance.platform.feature_store import built_encoder, item_features_from_store, require_same_encoder

    if feature_repo is not None:
        require_same_encoder(built_encoder(feature_repo), read_manifest(student_dir, "student")["encoder_fingerprint"],
                             f"feature repo {feature_repo}")

    def item_features(item_ids: list[str]):
        return item_features_from_store(feature_repo, item_ids)

    with tempfile.TemporaryDirectory() as tmp:
        champion = Registry(config.registry).download(config.registry.student_name, CHAMPION, Path(tmp) / "champion")
        return gate_challenger(config, dataset, student_dir, teacher_dir, html_path, Path(tmp), champion,
                               item_features if feature_repo is not None else None)
