"""relevance.platform.evaluate_step: the pipeline's evaluate step brings the platform's part and delegates."""

from __future__ import annotations

import json

import pytest


def test_the_evaluate_step_brings_the_champion_and_the_feature_store_and_only_delegates(tmp_path, monkeypatch):
    """evaluate_challenger is an adapter: the registry's champion and a Feast reader go to the core's one evaluation
    path (relevance.evaluation.challenger.gate_challenger, tested in tests/evaluation), whose outcome it returns."""
    from relevance.config import RunConfig
    from relevance.evaluation import challenger
    from relevance.platform import evaluate_step, feature_store, registry

    downloads, calls = [], []

    class FakeRegistry:
        def __init__(self, config):
            self.config = config

        def download(self, name, alias, destination):
            downloads.append((name, alias))
            return destination

    def gate(config, dataset, student_dir, teacher_dir, html_path, work_dir, champion, item_features):
        calls.append((student_dir, teacher_dir, html_path, champion.relative_to(work_dir), item_features))
        return {"gate_passed": True}

    monkeypatch.setattr(evaluate_step, "Registry", FakeRegistry)
    monkeypatch.setattr(challenger, "gate_challenger", gate)
    monkeypatch.setattr(feature_store, "item_features_from_store", lambda repo, ids: (repo, ids))
    config = RunConfig()
    for directory, name, content in (("s", "manifest.json", {"kind": "student", "encoder_fingerprint": "ab12" * 4}),
                                     ("repo", "embedding.json", {"encoder_fingerprint": "ab12" * 4})):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / name).write_text(json.dumps(content))
    assert evaluate_step.evaluate_challenger(config, None, tmp_path / "s", tmp_path / "t", tmp_path / "r.html",
                                             tmp_path / "repo") == {"gate_passed": True}
    assert downloads == [(config.registry.student_name, registry.CHAMPION)]
    (student, teacher, html, champion, item_features), = calls
    assert (student, teacher, html, str(champion)) == (tmp_path / "s", tmp_path / "t", tmp_path / "r.html", "champion")
    assert item_features(["a"]) == (tmp_path / "repo", ["a"])
    evaluate_step.evaluate_challenger(config, None, tmp_path / "s", tmp_path / "t", tmp_path / "r.html")
    assert calls[-1][-1] is None  # no feature repo: the items' features are computed from the catalog
    # features embedded by another encoder than the student's are refused before anything is evaluated
    (tmp_path / "repo" / "embedding.json").write_text(json.dumps({"encoder_fingerprint": "cd34" * 4}))
    with pytest.raises(feature_store.EmbeddingVersionMismatch, match=f"made by encoder {'cd34' * 4}, but the student's item tower is encoder {'ab12' * 4}"):
        evaluate_step.evaluate_challenger(config, None, tmp_path / "s", tmp_path / "t", tmp_path / "r.html",
                                          tmp_path / "repo")
    assert len(calls) == 2
