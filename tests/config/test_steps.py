"""The pipeline's steps, declared once (relevance.config.steps) and read by the config, the chain, the components
and the pipeline."""

from __future__ import annotations

import pytest

from relevance.chain import STEP_SETTINGS
from relevance.config import RunConfig
from relevance.config.cluster import DataVolume, SecretEnv
from relevance.config.steps import PIPELINE_STEPS, STEPS, declared_step


def test_each_step_is_declared_once_with_known_settings():
    assert len(set(PIPELINE_STEPS)) == len(STEPS)
    outputs = [step.output for step in STEPS if step.output]
    assert len(outputs) == len(set(outputs))
    sections = set(RunConfig.model_fields) - {"profile", "workdir"}
    for step in STEPS:
        assert set(step.settings) <= sections, step.name
        assert bool(step.output) == bool(step.settings), step.name
        assert step.pod is not None or step.gpu_pod is None, step.name


def test_the_chain_caches_the_declared_outputs_under_their_recorded_names():
    # workdir/steps.json records these names and hashes of these sections: a rename orphans every run's record,
    # a changed tuple invalidates (or wrongly keeps) every cached output.
    assert STEP_SETTINGS == {
        "data": ("data",),
        "pool": ("data", "text", "candidates"),
        "teacher": ("data", "text", "teacher"),
        "students": ("data", "text", "candidates", "student", "gbdt"),
        "gbdt": ("data", "text", "candidates", "student", "gbdt"),
    }


def test_data_volume_secrets_and_retries_follow_the_declarations():
    assert DataVolume(claim_name="data").steps == ["prepare_data", "validate_data", "compute_features",
                                                   "finetune_teacher", "build_pool", "distill_student",
                                                   "evaluate_student", "export_onnx"]
    assert SecretEnv(name="mlflow", env={"KEY": "MLFLOW_KEY"}).steps == ["check_refresh", "evaluate_student",
                                                                         "register_models", "start_canary"]
    assert declared_step("register_models").cacheable is False
    with pytest.raises(ValueError, match=r"unknown step\(s\) \['label_shards'\]"):
        declared_step("label_shards")


def test_every_component_is_a_declared_step_and_every_step_has_one():
    pytest.importorskip("kfp")
    from relevance.components import steps as components

    assert {name for name, value in vars(components).items() if hasattr(value, "component_spec")} == \
        set(PIPELINE_STEPS)

    def not_a_step():
        pass

    with pytest.raises(ValueError, match=r"unknown step\(s\) \['not_a_step'\]"):
        components.component(not_a_step)


def test_the_pipeline_holds_every_step_and_caches_where_its_declaration_allows():
    pytest.importorskip("kfp")
    from relevance.pipelines.training import build_pipeline, require_every_step

    spec = build_pipeline("quick").pipeline_spec
    tasks = {name: task for dag in [spec.root.dag, *(c.dag for c in spec.components.values())]
             for name, task in dag.tasks.items()}
    for step in STEPS:
        assert tasks[step.name.replace("_", "-")].caching_options.enable_cache is step.cacheable, step.name
    with pytest.raises(ValueError, match=r"missing from the DAG .*'prepare_data'"):
        require_every_step(["resolve_config"])
