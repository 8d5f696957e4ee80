"""A refresh round's two steps (serving/canary/refresh.py): the check before training, and the canary after the
challenger gate; the whole round through kfp.local is in tests/pipelines/test_loop.py."""

from __future__ import annotations

import json

import pytest

from relevance.data.schema import DataContractError, Dataset
from relevance.platform.registry import CHAMPION
from relevance.serving.canary.refresh import check_refresh, start_refresh_canary
from relevance.serving.canary.rollout import CANARY, CanaryError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    from relevance.data import synthetic

    out = tmp_path_factory.mktemp("refresh-data")
    synthetic.generate(out, num_items=60, num_judged_queries=12, num_impressions=0, seed=0)
    return Dataset.load(out, with_impressions=False)


def test_a_refresh_needs_a_champion_new_judgments_and_no_running_canary(registry_config, dataset):
    config, registry = registry_config
    name = config.registry.student_name
    registry.client.set_model_version_tag(name, "1", "data_hash", dataset.training_data_hash())
    with pytest.raises(DataContractError, match="no new judgments: .* champion v1 was trained on"):
        check_refresh(config, dataset, registry)

    registry.client.set_model_version_tag(name, "1", "data_hash", "an-older-hash")  # grades imported since
    assert check_refresh(config, dataset, registry) == {"champion": 1, "champion_data_hash": "an-older-hash",
                                                        "data_hash": dataset.training_data_hash()}
    registry.client.set_model_version_tag(name, "2", "data_hash", dataset.training_data_hash())
    registry.client.set_model_version_tag(name, "2", "canary", "rolled back")
    with pytest.raises(DataContractError, match=r"no new judgments since v2 \(rolled back\)"):
        check_refresh(config, dataset, registry)  # the canary it rolled back would come back
    registry.client.set_model_version_tag(name, "2", "data_hash", "another")
    registry.client.set_registered_model_alias(name, CANARY, "2")
    with pytest.raises(CanaryError, match="v2 is under canary: a refresh would replace"):
        check_refresh(config, dataset, registry)
    registry.client.delete_registered_model_alias(name, CANARY)
    registry.client.delete_registered_model_alias(name, CHAMPION)
    with pytest.raises(CanaryError, match="no 'champion'"):
        check_refresh(config, dataset, registry)


def test_on_kfp_local_the_refresh_canary_is_the_registry_alias_alone(registry_config):
    config, registry = registry_config
    name = config.registry.student_name
    done = start_refresh_canary(config, 2, "registry", registry)
    assert "no cluster (kfp.local)" in done and '"canaryTrafficPercent": 10' in done
    assert registry.alias_version(name, CANARY) == 2 and registry.alias_version(name, CHAMPION) == 1
    assert "already under canary" in start_refresh_canary(config, 2, "registry", registry)  # a retried step
    with pytest.raises(CanaryError, match="v2 is under canary: starting v3 would replace"):
        start_refresh_canary(config, 3, "registry", registry)
    with pytest.raises(ValueError, match="canary target"):
        start_refresh_canary(config, 3, "helm", registry)


def test_on_a_cluster_the_refresh_canary_is_patched_with_kubectl_at_the_refresh_share(cloud_registry,
                                                                                        fake_kubectl):
    config, registry = cloud_registry
    name = config.registry.student_name
    registry.client.delete_registered_model_alias(name, CANARY)  # the fixture's canary is over
    kubectl = fake_kubectl({"kind": "InferenceService"})
    config.canary.kubectl, config.canary.refresh_percent = str(kubectl), 25
    done = start_refresh_canary(config, 2, "kubectl", registry)
    assert "patched" in done and registry.alias_version(name, CANARY) == 2
    calls = [json.loads(line) for line in (kubectl.parent / "kubectl.calls").read_text().splitlines()]
    assert len(calls) == 1 and calls[0][:3] == ["patch", "inferenceservice", "relevance-student"]
    patch = json.loads(calls[0][calls[0].index("-p") + 1])
    assert patch["spec"]["predictor"] == {"canaryTrafficPercent": 25, "model": {
        "storageUri": "s3://relevance-mlflow/artifacts/2/model/onnx/model_repository"}}
