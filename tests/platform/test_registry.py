"""The MLflow registry: aliases through the CLI, and the evaluate step's adapter."""

from __future__ import annotations

from relevance.config import RegistryConfig


def test_registry_alias_flow_through_the_cli(cli, tmp_path):
    from relevance.platform.registry import CHALLENGER, CHAMPION, Registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text("{}")
    registry = Registry(RegistryConfig(tracking_uri=uri))
    env = {"MLFLOW_TRACKING_URI": uri}
    assert cli("registry", "rollback", env=env, check=False).returncode == 2  # no model yet: a clear error
    first = registry.register("relevance-student", model, {"a": 1}, {"accuracy": 0.5}, {"data_hash": "x"},
                              alias=CHALLENGER)
    assert "champion → v1" in cli("registry", "promote", env=env).stdout
    second = registry.register("relevance-student", model, {"a": 2}, {"accuracy": 0.6}, {}, alias=CHALLENGER)
    cli("registry", "promote", env=env)
    assert (registry.alias_version("relevance-student", CHAMPION), registry.alias_version(
        "relevance-student", CHALLENGER)) == (second, None)
    listing = cli("registry", "list", env=env).stdout
    assert "relevance-student v2 [champion]" in listing and "relevance-student v1 [-]" in listing
    assert "champion → v1 (rolled back)" in cli("registry", "rollback", env=env).stdout
    assert registry.alias_version("relevance-student", CHAMPION) == first
    bad = cli("registry", "promote", "--version", "7", env=env, check=False)
    assert bad.returncode == 2 and "no version 7" in bad.stderr


def test_the_evaluate_step_brings_the_champion_and_the_feature_store_and_only_delegates(tmp_path, monkeypatch):
    """evaluate_challenger is an adapter: the registry's champion and a Feast reader go to the core's one evaluation
    path (relevance.evaluation.challenger.gate_challenger, tested in tests/evaluation), whose outcome it returns."""
    from relevance.config import RunConfig
    from relevance.evaluation import challenger
    from relevance.platform import feature_store, registry

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

    monkeypatch.setattr(registry, "Registry", FakeRegistry)
    monkeypatch.setattr(challenger, "gate_challenger", gate)
    monkeypatch.setattr(feature_store, "item_features_from_store", lambda repo, ids: (repo, ids))
    config = RunConfig()
    assert registry.evaluate_challenger(config, None, tmp_path / "s", tmp_path / "t", tmp_path / "r.html",
                                        tmp_path / "repo") == {"gate_passed": True}
    assert downloads == [(config.registry.student_name, registry.CHAMPION)]
    (student, teacher, html, champion, item_features), = calls
    assert (student, teacher, html, str(champion)) == (tmp_path / "s", tmp_path / "t", tmp_path / "r.html", "champion")
    assert item_features(["a"]) == (tmp_path / "repo", ["a"])
    registry.evaluate_challenger(config, None, tmp_path / "s", tmp_path / "t", tmp_path / "r.html")
    assert calls[-1][-1] is None  # no feature repo: the items' features are computed from the catalog
