"""The compiled training pipeline, parsed strictly: its PipelineSpec and kfp-kubernetes' per-executor settings."""

from __future__ import annotations

import json

import pytest
import yaml


class CompiledPipeline:
    """A compiled pipeline YAML as protos: ``spec`` (PipelineSpec) and ``kubernetes[executor]``
    (KubernetesExecutorConfig, from the YAML's second document, ``platforms: kubernetes:``)."""

    def __init__(self, path):
        from google.protobuf import json_format
        from kfp.kubernetes.kubernetes_executor_config_pb2 import KubernetesExecutorConfig
        from kfp.pipeline_spec import pipeline_spec_pb2

        documents = list(yaml.safe_load_all(path.read_text()))
        self.spec = pipeline_spec_pb2.PipelineSpec()
        json_format.ParseDict(documents[0], self.spec, ignore_unknown_fields=False)  # strict: unknown fields raise
        platform = pipeline_spec_pb2.PlatformSpec()
        if len(documents) > 1:
            json_format.ParseDict(documents[1], platform, ignore_unknown_fields=False)
        executors = platform.platforms["kubernetes"].deployment_spec.executors if platform.platforms else {}
        self.kubernetes = {}
        for name, settings in executors.items():
            config = KubernetesExecutorConfig()
            json_format.ParseDict(json_format.MessageToDict(settings), config, ignore_unknown_fields=False)
            self.kubernetes[name] = config

    def container(self, step: str):
        """The container of ``step`` (a relevance.components.steps function name)."""
        return self.spec.deployment_spec.fields["executors"].struct_value.fields[f"exec-{step.replace('_', '-')}"] \
            .struct_value.fields["container"].struct_value

    def resources(self, step: str) -> dict:
        from google.protobuf import json_format

        return json_format.MessageToDict(self.container(step)).get("resources", {})

    def env(self, step: str) -> dict:
        from google.protobuf import json_format

        return {e["name"]: e["value"] for e in json_format.MessageToDict(self.container(step)).get("env", [])}

    def task(self, step: str):
        """``step``'s task, wherever it sits in the DAG (the root, the fan-out's loop, the gate's branch)."""
        name = step.replace("_", "-")
        for dag in [self.spec.root.dag] + [c.dag for c in self.spec.components.values()]:
            if name in dag.tasks:
                return dag.tasks[name]
        raise KeyError(name)

    def labelling_loop(self):
        return next(t for t in self.spec.root.dag.tasks.values() if t.WhichOneof("iterator") == "parameter_iterator")


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """``compiled(profile, overrides=None) -> (CompiledPipeline, RunConfig)``: the training pipeline compiled
    with relevance.pipelines.training.compile_pipeline for that config (cached per config)."""
    from relevance.config import build_config
    from relevance.pipelines.training import compile_pipeline

    cache: dict[str, tuple] = {}

    def compile_(profile: str, overrides: dict | None = None):
        key = json.dumps([profile, overrides], sort_keys=True)
        if key not in cache:
            path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
            compile_pipeline(path, "registry.example.com/relevance:test", profile, overrides)
            cache[key] = CompiledPipeline(path), build_config(profile, overrides)
        return cache[key]

    return compile_


@pytest.fixture(scope="session")
def read_compiled():
    """``read_compiled(path) -> CompiledPipeline``: a pipeline YAML compiled elsewhere (the CLI), parsed strictly."""
    return CompiledPipeline


# In the pipeline the labelling plan cuts the shards: at 100 pairs/s with 1 s to load the teacher and shards of at
# most 6 s, a shard holds at most 500 rows, and a 12 s deadline takes two devices: a fan-out of several shards,
# two at a time.
TINY_LABELLING = {"pairs_per_s_per_device": 100.0, "shard_overhead_s": 1.0, "max_shard_s": 6.0, "deadline_s": 12.0,
                  "expected_pool_rows": 800, "max_devices": 2}


@pytest.fixture(scope="session")
def tiny_overrides(run_settings):
    """``tiny_overrides(section={...}, …)``: run overrides for a whole pipeline run in a minute or two (tiny BERT,
    a small shop, the labelling fan-out planned for a few shards); keyword arguments update whole sections."""

    def make(**extra) -> dict:
        overrides = run_settings(items=200, judged_queries=40, impressions=600, top_k=8, shard_rows=500,
                                 teacher_epochs=1, student_epochs=2, max_length=48, student_hidden=16)
        overrides["cluster"] = {"labeling": dict(TINY_LABELLING)}
        for key, value in extra.items():
            overrides.setdefault(key, {}).update(value)
        return overrides

    return make
