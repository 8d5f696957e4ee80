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
