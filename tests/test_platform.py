"""The platform around the core: the compiled KFP pipeline, a local pipeline run (kfp.local), the Great
Expectations gate stopping a run, the Feast round trip and the MLflow registry's aliases."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from relevance.config import RegistryConfig, build_config
from relevance.data import prepare
from conftest import tiny_run_settings

CLI = [sys.executable, "-m", "relevance.cli"]
REPO = Path(__file__).resolve().parents[1]


def _cli(*args, env=None, check=True):
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"relevance {' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result


def _tiny_overrides(tiny_bert: Path, **extra) -> dict:
    overrides = tiny_run_settings(tiny_bert, items=200, judged_queries=40, impressions=600, top_k=8,
                                  shard_rows=500, teacher_epochs=1, student_epochs=2, max_length=48,
                                  student_hidden=16)
    for key, value in extra.items():
        overrides.setdefault(key, {}).update(value)
    return overrides


# ---- compile -------------------------------------------------------------------------------------------------

def test_compiled_yaml_parses_strictly_into_a_pipeline_spec(tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    out = tmp_path / "pipeline.yaml"
    _cli("pipeline", "compile", "--out", str(out), "--image", "registry.example.com/relevance:test")
    documents = list(yaml.safe_load_all(out.read_text()))
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(documents[0], spec, ignore_unknown_fields=False)  # strict: unknown fields raise

    assert spec.pipeline_info.name == "relevance-distillation-training"
    root = spec.root.dag.tasks
    expected = {"resolve-config", "prepare-data", "validate-data", "require-valid-data", "compute-features",
                "finetune-teacher", "build-pool", "distill-student", "evaluate-student", "export-onnx",
                "challenger-gate"}
    assert expected <= set(root), set(root)
    # fan-out over the pool's shards (dsl.ParallelFor), joined by the student's List[Dataset] input
    loops = [t for t in root.values() if t.WhichOneof("iterator") == "parameter_iterator"]
    assert len(loops) == 1 and "build-pool" in loops[0].dependent_tasks
    loop_dag = spec.components[loops[0].component_ref.name].dag
    assert set(loop_dag.tasks) == {"label-shard"}
    assert spec.components["comp-distill-student"].input_definitions.artifacts["labels"].is_artifact_list
    # registration is conditional on the challenger gate (dsl.If)
    conditions = [t for t in root.values() if t.trigger_policy.condition]
    assert len(conditions) == 1 and "challenger-gate" in conditions[0].trigger_policy.condition
    assert "register-models" in spec.components[conditions[0].component_ref.name].dag.tasks
    # training waits for the data gate
    for task in ("finetune-teacher", "compute-features", "build-pool"):
        assert "require-valid-data" in root[task].dependent_tasks
    # the image is a run parameter, defaulting to --image; nothing is pip-installed at run time
    assert spec.root.input_definitions.parameters["image"].default_value.string_value == \
        "registry.example.com/relevance:test"
    for name, executor in spec.deployment_spec["executors"].items():
        container = executor["container"]
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}", name
        assert "pip install" not in " ".join(list(container["command"]) + list(container["args"])), name
    # parameters are documented for the Kubeflow UI
    assert "overrides_json" in spec.root.input_definitions.parameters
    assert spec.root.input_definitions.parameters["profile"].description


# ---- local run -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_bert):
    from pipelines.run import local_outputs, run_local

    tmp = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = _tiny_overrides(tiny_bert, registry={"tracking_uri": uri})
    run_dir = run_local("quick", overrides, tmp / "root")
    return run_dir, local_outputs(run_dir), uri


def test_local_run_registers_a_challenger_with_lineage(local_run):
    from relevance.registry import CHALLENGER, Registry

    _, _, uri = local_run
    registry = Registry(RegistryConfig(tracking_uri=uri))
    student, teacher = registry.versions("relevance-student"), registry.versions("relevance-teacher")
    assert [v.version for v in student] == [1] and [v.version for v in teacher] == [1]
    assert student[0].aliases == [CHALLENGER]
    tags = student[0].tags
    assert tags["gx_success"] == "True" and int(tags["gx_checked_expectations"]) > 10
    assert len(tags["data_hash"]) >= 12 and tags["teacher_version"].startswith("teacher-")
    views = json.loads(tags["feature_views"])
    assert {"item_embeddings", "item_text", "item_numeric", "query_stats", "definitions"} <= set(views)
    run = registry.client.get_run(student[0].run_id)
    assert "accuracy" in run.data.metrics and "student.hidden" in run.data.params
    downloaded = registry.download("relevance-student", CHALLENGER, Path(run.info.artifact_uri.removeprefix("file://")).parent / "dl")
    assert (downloaded / "manifest.json").exists() and (downloaded / "onnx" / "student.onnx").exists()


def test_local_run_leaves_reports_and_a_populated_online_store(local_run):
    from relevance.feature_store import online_item_features

    run_dir, outputs, _ = local_run
    assert outputs["evaluation report (HTML)"].read_text().startswith("<!doctype html>")
    assert "Challenger gate: PASS" in outputs["evaluation report (HTML)"].read_text()
    assert outputs["data docs (Great Expectations)"].exists()
    items = pd.read_parquet(run_dir / "prepare-data" / "dataset" / "items.parquet")
    online = online_item_features(outputs["feast repo"], [items["item_id"].iloc[0], "no-such-item"])
    assert len(online["embedding"][0]) == 32 and online["embedding"][1] is None  # tiny BERT: 32-d
    assert online["lexical_text"][0]
    # every shard of the fan-out was labelled exactly once
    shards = sorted(p.name for p in run_dir.glob("for-loop-*/label-shard/labels/shard-*.parquet"))
    pool_rows = len(pd.read_parquet(run_dir / "build-pool" / "pool"))
    assert len(shards) == len(set(shards)) == -(-pool_rows // 500)


# ---- the data gate -------------------------------------------------------------------------------------------

def test_gx_gate_stops_the_pipeline_and_nothing_is_registered(tmp_path, tiny_bert):
    from relevance.registry import Registry

    source = tmp_path / "source"
    prepare(build_config("quick", _tiny_overrides(tiny_bert)).data, source)
    judgments = pd.read_parquet(source / "judgments.parquet")
    judgments.loc[0, "item_id"] = None                                   # a null key
    judgments.loc[1, "grade"] = 9                                        # out of range for K=5
    judgments = pd.concat([judgments, judgments.iloc[[2]]])              # a duplicated pair
    judgments.to_parquet(source / "judgments.parquet", index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"profile": "quick", **_tiny_overrides(
        tiny_bert, data={"source": "prepared", "path": str(source)}, registry={"tracking_uri": uri})}))
    result = _cli("pipeline", "run", "--local", "-c", str(config), "--pipeline-root", str(tmp_path / "root"),
                  check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    # the message names each failed expectation and its column
    assert "Data validation FAILED" in result.stderr
    assert "expect_column_values_to_be_between on column 'grade'" in result.stderr
    assert "expect_column_values_to_not_be_null on column 'item_id'" in result.stderr
    assert "expect_compound_columns_to_be_unique" in result.stderr
    run_dir = next((tmp_path / "root").iterdir())
    assert (run_dir / "validate-data" / "data_docs" / "index.html").exists()  # kept as an artifact
    assert not (run_dir / "finetune-teacher").exists() and not (run_dir / "register-models").exists()
    assert Registry(RegistryConfig(tracking_uri=uri)).versions("relevance-student") == []


# ---- Feast ---------------------------------------------------------------------------------------------------

def test_feast_apply_materialize_and_read_back(tmp_path):
    from relevance.candidates import lexical_item_texts
    from relevance.data.schema import Dataset
    from relevance.feature_store import (apply_and_materialize, build_feature_repo, feature_tables,
                                         item_embeddings_from_store, online_item_features)

    config = build_config("quick", {"data": {"synthetic_items": 50, "synthetic_judged_queries": 12,
                                             "synthetic_impressions": 100}})
    dataset = Dataset.load(prepare(config.data, tmp_path / "data"))
    rng = np.random.default_rng(0)
    embed = lambda texts: rng.standard_normal((len(texts), 8)).astype(np.float32)  # noqa: E731
    tables = feature_tables(dataset, lexical_item_texts(dataset.items, config.text), embed)
    repo = build_feature_repo(REPO / "feature_repo", tmp_path / "repo", tables)
    versions = apply_and_materialize(repo)
    assert versions == {"item_embeddings": "1", "item_text": "1", "item_numeric": "1", "query_stats": "1"}
    ids = dataset.items["item_id"].tolist()
    offline = item_embeddings_from_store(repo, ids[:5])
    expected = tables["item_embeddings"].set_index("item_id")["embedding"]
    for item_id in ids[:5]:
        np.testing.assert_allclose(offline[item_id], expected[item_id], rtol=1e-6)
    online = online_item_features(repo, ids[:3])
    np.testing.assert_allclose(online["embedding"][2], expected[ids[2]], rtol=1e-6)
    impressions = dataset.impressions["item_id"].value_counts()
    assert online["impressions"] == [int(impressions.get(i, 0)) for i in ids[:3]]
    # the feast CLI works on the run's repo too
    plan = subprocess.run([str(Path(sys.executable).with_name("feast")), "-c", str(repo), "plan"],
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr[-2000:]
    with pytest.raises(Exception, match="no item_embeddings"):
        item_embeddings_from_store(repo, ["not-an-item"])


# ---- registry ------------------------------------------------------------------------------------------------

def test_registry_alias_flow_through_the_cli(tmp_path):
    from relevance.registry import CHALLENGER, CHAMPION, Registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text("{}")
    registry = Registry(RegistryConfig(tracking_uri=uri))
    env = {"MLFLOW_TRACKING_URI": uri}
    assert _cli("registry", "rollback", env=env, check=False).returncode == 2  # no model yet: a clear error
    first = registry.register("relevance-student", model, {"a": 1}, {"accuracy": 0.5}, {"data_hash": "x"},
                              alias=CHALLENGER)
    assert "champion → v1" in _cli("registry", "promote", env=env).stdout
    second = registry.register("relevance-student", model, {"a": 2}, {"accuracy": 0.6}, {}, alias=CHALLENGER)
    _cli("registry", "promote", env=env)
    assert (registry.alias_version("relevance-student", CHAMPION), registry.alias_version(
        "relevance-student", CHALLENGER)) == (second, None)
    listing = _cli("registry", "list", env=env).stdout
    assert "relevance-student v2 [champion]" in listing and "relevance-student v1 [-]" in listing
    assert "champion → v1 (rolled back)" in _cli("registry", "rollback", env=env).stdout
    assert registry.alias_version("relevance-student", CHAMPION) == first
    bad = _cli("registry", "promote", "--version", "7", env=env, check=False)
    assert bad.returncode == 2 and "no version 7" in bad.stderr


def test_challenger_gate_needs_thresholds_and_a_win_over_the_champion():
    from relevance.registry import challenger_gate

    config = RegistryConfig(min_accuracy=0.4, min_ndcg=0.8)
    good = {"accuracy": 0.5, "ndcg@20": 0.9}
    assert challenger_gate(good, None, config, "ndcg@20")[0]
    assert not challenger_gate({"accuracy": 0.3, "ndcg@20": 0.9}, None, config, "ndcg@20")[0]
    assert not challenger_gate({"accuracy": 0.5, "ndcg@20": 0.7}, None, config, "ndcg@20")[0]
    assert challenger_gate(good, {"accuracy": 0.5, "ndcg@20": 0.89}, config, "ndcg@20")[0]
    passed, reason = challenger_gate(good, {"accuracy": 0.5, "ndcg@20": 0.9}, config, "ndcg@20")
    assert not passed and "not above" in reason  # a tie keeps the champion


# ---- submit --------------------------------------------------------------------------------------------------

def test_submit_builds_a_kfp_client_run(monkeypatch):
    import kfp

    from pipelines import run as pipeline_run

    calls = {}

    class RecordingClient:
        def __init__(self, host, namespace=None, existing_token=None):
            calls["client"] = (host, namespace, existing_token)

        def create_run_from_pipeline_func(self, pipeline_func, arguments, experiment_name, run_name, namespace):
            calls["run"] = (pipeline_func.name, arguments, experiment_name, namespace)
            return type("Result", (), {"run_id": "run-123"})()

    monkeypatch.setattr(kfp, "Client", RecordingClient)
    result = pipeline_run.submit("https://kfp.example.com", "default", {"registry": {"min_ndcg": 0.85}},
                                 "relevance", namespace="team-search")
    assert result.run_id == "run-123"
    assert calls["client"] == ("https://kfp.example.com", "team-search", None)
    name, arguments, experiment, namespace = calls["run"]
    assert name == "relevance-distillation-training" and experiment == "relevance"
    assert arguments == {"profile": "default", "overrides_json": '{"registry": {"min_ndcg": 0.85}}'}
    with pytest.raises(ValueError):  # a bad setting fails before anything reaches the cluster
        pipeline_run.submit("https://kfp.example.com", "default", {"registry": {"min_ndcg": 3}}, "relevance")
