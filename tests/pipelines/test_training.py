"""The training pipeline: the compiled PipelineSpec, a local run (kfp.local) end to end, the Great Expectations
gate stopping a run, submission and scheduling on a cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from relevance.config import RegistryConfig, build_config
from relevance.data import prepare

def test_compiled_yaml_parses_strictly_into_a_pipeline_spec(cli, tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    out = tmp_path / "pipeline.yaml"
    cli("pipeline", "compile", "--out", str(out), "--image", "registry.example.com/relevance:test")
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
    gated = spec.components[conditions[0].component_ref.name].dag.tasks
    assert "register-models" in gated
    # a refresh run (the refresh parameter) puts the registered student under canary; it checks first, before
    # anything trains, that there is something to refresh
    refreshing = [t for t in gated.values() if t.trigger_policy.condition]
    assert len(refreshing) == 1 and "pipelinechannel--refresh" in refreshing[0].trigger_policy.condition
    canary = spec.components[refreshing[0].component_ref.name].dag.tasks["start-canary"]
    assert canary.inputs.parameters["target"].runtime_value.constant.string_value == "kubectl"
    assert "register-models" in canary.inputs.parameters["model_version"].component_input_parameter
    assert spec.root.input_definitions.parameters["refresh"].default_value.bool_value is False
    for task in ("finetune-teacher", "compute-features", "build-pool"):
        assert "check-refresh" in root[task].dependent_tasks
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


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_overrides):
    from relevance.pipelines.run import local_outputs, run_local

    tmp = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = tiny_overrides(registry={"tracking_uri": uri})
    run_dir = run_local("quick", overrides, tmp / "root")
    return run_dir, local_outputs(run_dir), uri


def test_local_run_registers_a_challenger_with_lineage(local_run):
    from relevance.platform.registry import CHALLENGER, Registry

    _, _, uri = local_run
    registry = Registry(RegistryConfig(tracking_uri=uri))
    student, teacher = registry.versions("relevance-student"), registry.versions("relevance-teacher")
    assert [v.version for v in student] == [1] and [v.version for v in teacher] == [1]
    assert student[0].aliases == [CHALLENGER]
    tags = student[0].tags
    assert tags["gx_success"] == "True" and int(tags["gx_checked_expectations"]) > 10
    assert len(tags["data_hash"]) >= 12 and tags["teacher_version"].startswith("teacher-")
    views = json.loads(tags["feature_views"])
    assert views == {"item_embeddings": "1", "item_text": "2", "definitions": views["definitions"],
                     "project": views["project"], "encoder_fingerprint": tags["encoder_fingerprint"]}
    # the encoder it was trained on, which embedded the materialized items too (serving checks the two agree)
    assert re.fullmatch(r"[0-9a-f]{16}", tags["encoder_fingerprint"])
    # the versioned Feast project the features were materialized to, which the serving bundle names too
    assert re.fullmatch(r"relevance_[0-9a-f]{12}", views["project"])
    run = registry.client.get_run(student[0].run_id)
    assert "accuracy" in run.data.metrics and "student.hidden" in run.data.params
    downloaded = registry.download("relevance-student", CHALLENGER, Path(run.info.artifact_uri.removeprefix("file://")).parent / "dl")
    assert (downloaded / "manifest.json").exists() and (downloaded / "onnx" / "student.onnx").exists()
    bundle = json.loads((downloaded / "onnx" / "bundle.json").read_text())
    assert bundle["feature_project"] == views["project"]
    assert bundle["encoder_fingerprint"] == tags["encoder_fingerprint"]


def test_local_run_leaves_reports_and_a_populated_online_store(local_run, tiny_overrides):
    from relevance.platform.feature_store import open_store
    from relevance.platform.item_source import online_item_features

    run_dir, outputs, _ = local_run
    assert outputs["evaluation report (HTML)"].read_text().startswith("<!doctype html>")
    assert "Challenger gate: PASS" in outputs["evaluation report (HTML)"].read_text()
    assert outputs["data docs (Great Expectations)"].exists()
    items = pd.read_parquet(run_dir / "prepare-data" / "dataset" / "items.parquet")
    online = online_item_features(open_store(outputs["feast repo"]), [items["item_id"].iloc[0], "no-such-item"])
    assert len(online["embedding"][0]) == 32 and online["embedding"][1] is None  # tiny BERT: 32-d
    assert online["lexical_text"][0]
    # every shard of the fan-out was labelled exactly once, cut by the labelling plan for the compiled parallelism
    from relevance.config import LabelFanOutConfig
    from relevance.labels.capacity import plan_for

    capacity = LabelFanOutConfig(**tiny_overrides()["cluster"]["labeling"])
    shards = sorted(p.name for p in run_dir.glob("for-loop-*/label-shard/labels/shard-*.parquet"))
    pool_rows = len(pd.read_parquet(run_dir / "build-pool" / "pool"))
    parallelism = plan_for(capacity, strict=True).devices
    plan = plan_for(capacity, pool_rows=pool_rows, max_devices=parallelism)
    assert parallelism == 2 and plan.shards >= 2
    assert len(shards) == len(set(shards)) == plan.shards


def test_gx_gate_stops_the_pipeline_and_nothing_is_registered(cli, tmp_path, tiny_overrides):
    from relevance.platform.registry import Registry

    source = tmp_path / "source"
    prepare(build_config("quick", tiny_overrides()).data, source)
    judgments = pd.read_parquet(source / "judgments.parquet")
    judgments.loc[0, "item_id"] = None                                   # a null key
    judgments.loc[1, "grade"] = 9                                        # out of range for K=5
    judgments = pd.concat([judgments, judgments.iloc[[2]]])              # a duplicated pair
    judgments.to_parquet(source / "judgments.parquet", index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"profile": "quick", **tiny_overrides(
        data={"source": "prepared", "path": str(source)}, registry={"tracking_uri": uri})}))
    result = cli("pipeline", "run", "--local", "-c", str(config), "--pipeline-root", str(tmp_path / "root"),
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
