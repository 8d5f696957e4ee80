"""Canary fixtures: the shipped overlays rendered once, registries with a champion and candidates, a kubectl that
answers without a cluster, and two real students to serve."""

from __future__ import annotations

import copy
import json
import shutil
import stat
import sys
from types import SimpleNamespace

import pytest
import yaml
from relevance.serving.canary.manifests import OVERLAYS, overlay_dir, render

from relevance.config import RunConfig


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(overlay_dir(overlay)) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def mlflow_templates(tmp_path_factory) -> dict:
    """Registries built once per session and copied by the fixtures below (creating MLflow's tables takes
    seconds): ``file``, a champion v1 and two more versions (v3 computes other features) registered from model
    directories; ``cloud``, the same model with s3:// sources (KServe can fetch them), champion v1 and v2."""
    from relevance.platform.registry import CHAMPION, Registry

    templates = {}
    for kind in ("file", "cloud"):
        root = tmp_path_factory.mktemp(f"mlflow-{kind}")
        config = RunConfig(registry={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"})
        registry = Registry(config.registry)
        name = config.registry.student_name
        if kind == "file":
            # v4: same features, but a serving graph of other inputs (v1–v3 predate the tag: "features")
            for version, tags in ((1, {"feature_version": "3"}), (2, {"feature_version": "3"}),
                                  (3, {"feature_version": "4"}),
                                  (4, {"feature_version": "3", "student_inputs": "query,item,lexical"})):
                model = root / f"student-{version}"
                model.mkdir()
                (model / "manifest.json").write_text(json.dumps({"kind": "student"}))
                registry.register(name, model, {}, {"accuracy": 0.5}, tags,
                                  alias=CHAMPION if version == 1 else None)
        else:
            registry.client.create_registered_model(name)
            for version in (1, 2):
                registry.client.create_model_version(name, f"s3://relevance-mlflow/artifacts/{version}/model",
                                                     tags={"feature_version": "3"})
            registry.client.set_registered_model_alias(name, CHAMPION, "1")
        templates[kind] = root / "mlflow.db"
    return templates


def _registry_copy(template, tmp_path):
    from relevance.platform.registry import Registry

    shutil.copy(template, tmp_path / "mlflow.db")
    config = RunConfig(workdir=str(tmp_path / "run"),
                       registry={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    return config, Registry(config.registry)


@pytest.fixture()
def registry_config(mlflow_templates, tmp_path):
    """A registry of this test's own with champion v1 and two more versions (v3 computes other features)."""
    return _registry_copy(mlflow_templates["file"], tmp_path)


@pytest.fixture()
def cloud_registry(mlflow_templates, tmp_path):
    """A registry whose versions live on object storage (s3:// sources, which KServe can fetch): champion v1 and
    v2 under canary, as `relevance canary start --apply` leaves them."""
    from relevance.serving.canary.rollout import CANARY

    config, registry = _registry_copy(mlflow_templates["cloud"], tmp_path)
    registry.client.set_registered_model_alias(config.registry.student_name, CANARY, "2")
    return config, registry


@pytest.fixture()
def fake_kubectl(tmp_path):
    """``fake_kubectl(isvc)``: a kubectl stand-in (path) that answers `get` with ``isvc`` as JSON and `patch` with
    a success line, and records every call, one JSON argument list a line, in ``<path>.calls``."""

    def make(isvc: dict):
        path, state = tmp_path / "kubectl", tmp_path / "isvc.json"
        state.write_text(json.dumps(isvc))
        path.write_text(f"""#!{sys.executable}
import json, sys
with open({str(path) + ".calls"!r}, "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "get":
    print(open({str(state)!r}).read())
elif sys.argv[1] == "patch":
    print("inferenceservice.serving.kserve.io/" + sys.argv[3] + " patched")
else:
    sys.exit("unexpected: " + " ".join(sys.argv[1:]))
""")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        return path

    return make


@pytest.fixture(scope="session")
def two_students(run_settings, cli, tmp_path_factory):
    """Two different students, exported and ready to serve: ``champion`` is a tiny run's student (features
    materialized in its feature repo); ``challenger`` is distilled from the same labels with another architecture
    and training. ``config`` is the champion run's config (dict), written to ``config_path``."""
    root = tmp_path_factory.mktemp("two-students")
    settings = run_settings(items=200, judged_queries=60, impressions=800)
    champion = {"profile": "quick", "workdir": str(root / "champion"), **settings,
                "serving": {"max_candidates": 50}, "eval": {"ks": [5, 10]},
                "canary": {"ndcg_k": 10, "judge_queries": 20, "judge_top_k": 5, "min_queries": 5,
                           "bootstrap_samples": 500, "max_p99_ms": 5000, "max_p99_ratio": 50}}
    champion_config = root / "champion.yaml"
    champion_config.write_text(yaml.safe_dump(champion))
    cli("run", "--config", str(champion_config))
    cli("features", "--config", str(champion_config))
    cli("export", "--config", str(champion_config))
    # Same data, teacher and labels; the students are trained anew.
    shutil.copytree(root / "champion", root / "challenger",
                    ignore=shutil.ignore_patterns("export", "student", "student_human_only"))
    challenger = copy.deepcopy(champion)
    challenger["workdir"] = str(root / "challenger")
    challenger["student"] = {**challenger["student"], "hidden": [8], "epochs": 1}
    challenger_config = root / "challenger.yaml"
    challenger_config.write_text(yaml.safe_dump(challenger))
    cli("train-student", "--config", str(challenger_config))
    cli("export", "--config", str(challenger_config))
    return SimpleNamespace(config=champion, config_path=champion_config, feature_repo=root / "champion/feature_repo",
                           bundles={"champion": root / "champion/export", "challenger": root / "challenger/export"},
                           students={"champion": root / "champion/student", "challenger": root / "challenger/student"})
