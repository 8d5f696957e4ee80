"""The serving and canary sections: a request fits one Triton batch, the watch's URLs, Kubernetes names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relevance.config.serving import CanaryConfig, ServingConfig


def test_one_request_is_one_batch():
    ServingConfig(max_candidates=4096, triton_max_batch_size=4096)
    with pytest.raises(ValidationError, match="one request is one batch of candidates"):
        ServingConfig(max_candidates=5000)


def test_names_are_kubernetes_names():
    with pytest.raises(ValidationError, match="String should match pattern"):
        ServingConfig(model_name="Relevance_Student")
    with pytest.raises(ValidationError, match="String should match pattern"):
        CanaryConfig(namespace="-relevance")


def test_the_watch_urls_take_only_their_placeholders():
    canary = CanaryConfig()
    assert canary.champion_predictor_url.format(name="s", namespace="ns") == \
        "http://prev-s-predictor.ns.svc.cluster.local"
    with pytest.raises(ValidationError, match=r"only placeholders are \{name\} and \{namespace\}"):
        CanaryConfig(challenger_predictor_url="http://{model}-predictor")
    with pytest.raises(ValidationError, match="give both rerank servers or neither"):
        CanaryConfig(champion_url="http://a:1")
