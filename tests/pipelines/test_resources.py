"""What the compiled pipeline asks a cluster for, read back from the PipelineSpec: CPU and memory on every step,
GPUs where the teacher runs (gpu profile), node selectors, tolerations, the data volume, secrets, the labelling
fan-out's parallelism (from the labelling plan) and retries; and the cluster settings the config refuses."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from relevance.config import PIPELINE_STEPS, build_config
from relevance.labels.capacity import plan_for

GPU_STEPS = ("finetune_teacher", "label_shard", "distill_student", "evaluate_student")


def test_every_pipeline_step_has_cluster_settings_and_every_step_is_in_the_pipeline(compiled):
    pipeline, _ = compiled("default")
    executors = set(pipeline.spec.deployment_spec.fields["executors"].struct_value.fields)
    assert executors == {f"exec-{step.replace('_', '-')}" for step in PIPELINE_STEPS}


@pytest.mark.parametrize("profile", ["default", "gpu"])
def test_every_step_requests_and_limits_cpu_and_memory_from_the_config(compiled, profile):
    pipeline, config = compiled(profile)
    for step in PIPELINE_STEPS:
        wanted, resources = config.cluster.step(step), pipeline.resources(step)
        assert resources["resourceCpuRequest"] == wanted.cpu_request, step
        assert resources["resourceCpuLimit"] == wanted.cpu_limit, step
        assert resources["resourceMemoryRequest"] == wanted.memory_request, step
        assert resources["resourceMemoryLimit"] == wanted.memory_limit, step
        # a container sees every core of its node: its thread count follows its CPU limit
        assert pipeline.env(step)["RELEVANCE_THREADS"] == str(math.floor(float(wanted.cpu_limit))), step
    label = pipeline.resources("label_shard")
    assert label["resourceCpuRequest"] == label["resourceCpuLimit"]  # the measured rate is for exactly these cores


def test_default_profile_asks_for_no_gpu_and_no_special_nodes(compiled):
    pipeline, _ = compiled("default")
    for step in PIPELINE_STEPS:
        assert "accelerator" not in pipeline.resources(step), step
    assert pipeline.kubernetes == {}  # no node selector, toleration, volume or secret on CPU nodes by default


def test_gpu_profile_runs_the_teacher_on_gpu_nodes(compiled):
    pipeline, config = compiled("gpu")
    for step in PIPELINE_STEPS:
        executor = pipeline.kubernetes.get(f"exec-{step.replace('_', '-')}")
        if step in GPU_STEPS:
            accelerator = pipeline.resources(step)["accelerator"]
            assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1", step
            assert dict(executor.node_selector.labels) == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
            [toleration] = executor.tolerations
            assert (toleration.key, toleration.operator, toleration.effect) == ("nvidia.com/gpu", "Exists",
                                                                                "NoSchedule")
        else:
            assert "accelerator" not in pipeline.resources(step), step
            assert executor is None or (not executor.node_selector.labels and not executor.tolerations), step
    # the decoder's weights and the data come from a shared claim, mounted where a step reads configured paths
    volume = config.cluster.data_volume
    for step in PIPELINE_STEPS:
        executor = pipeline.kubernetes.get(f"exec-{step.replace('_', '-')}")
        mounts = [(m.constant or m.pvc_name_parameter.runtime_value.constant.string_value, m.mount_path)
                  for m in (executor.pvc_mount if executor else [])]
        assert mounts == ([("relevance-data", "/mnt/data")] if step in volume.steps else []), step
    assert "finetune_teacher" in volume.steps and "prepare_data" in volume.steps


@pytest.mark.parametrize("profile, devices", [("default", 5), ("gpu", 70)])
def test_labelling_fan_out_parallelism_comes_from_the_plan(compiled, profile, devices):
    pipeline, config = compiled(profile)
    plan = plan_for(config.cluster.labeling)
    assert plan.devices == devices and plan.fits  # gpu: 30M pairs at 169 pairs/s per H100 within the hour
    loop = pipeline.labelling_loop()
    assert loop.iterator_policy.parallelism_limit == plan.devices
    # build_pool cuts the shards for the same parallelism, once the pool's rows are known
    build_pool = pipeline.task("build_pool")
    assert build_pool.inputs.parameters["parallelism"].runtime_value.constant.number_value == plan.devices


def test_retries_with_backoff_where_a_rerun_is_safe(compiled):
    pipeline, config = compiled("gpu")
    shard = pipeline.task("label_shard").retry_policy
    assert shard.max_retry_count == 3  # a preempted shard reruns: its file is written atomically, whole or not
    assert (shard.backoff_duration.seconds, shard.backoff_factor, shard.backoff_max_duration.seconds) == (30, 2.0,
                                                                                                          3600)
    assert pipeline.task("finetune_teacher").retry_policy.max_retry_count == 1
    assert pipeline.task("prepare_data").retry_policy.max_retry_count == 2
    for step in ("require_valid_data", "resolve_config", "challenger_gate"):
        assert not pipeline.task(step).HasField("retry_policy"), step
    # registration is idempotent (a retry registers nothing twice): it inherits `default`'s retries
    assert pipeline.task("register_models").retry_policy.max_retry_count == config.cluster.step("register_models").retries == 2


def test_a_config_file_compiles_to_its_own_pipeline(cli, read_compiled, tmp_path):
    """`relevance pipeline compile -c`: secrets, pull secrets, another claim; the config becomes the default of
    the pipeline's parameters, so that a run started unchanged from the UI runs what the pods were sized for."""
    overrides = {
        "registry": {"tracking_uri": "http://mlflow.mlflow:5000"},
        "cluster": {
            "steps": {"label_shard": {"tolerations": [{"key": "spot", "value": "true", "effect": "NoSchedule"}],
                                      "node_selector": {"pool": "spot"}}},
            "data_volume": {"claim_name": "shop-data", "mount_path": "/data", "steps": ["prepare_data"]},
            "secrets": [{"name": "mlflow-auth", "env": {"token": "MLFLOW_TRACKING_TOKEN"}}],
            "image_pull_secrets": ["registry-creds"],
            "labeling": {"expected_pool_rows": 200_000},
        },
    }
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"profile": "default", **overrides}))  # JSON is YAML
    out = tmp_path / "pipeline.yaml"
    cli("pipeline", "compile", "--out", str(out), "-c", str(config))
    pipeline = read_compiled(out)
    parameters = pipeline.spec.root.input_definitions.parameters
    assert parameters["profile"].default_value.string_value == "default"
    assert json.loads(parameters["overrides_json"].default_value.string_value) == overrides
    kubernetes = pipeline.kubernetes
    label = kubernetes["exec-label-shard"]
    assert dict(label.node_selector.labels) == {"pool": "spot"}
    assert [(t.key, t.operator, t.value, t.effect) for t in label.tolerations] == [("spot", "Equal", "true",
                                                                                   "NoSchedule")]
    assert [m.mount_path for m in kubernetes["exec-prepare-data"].pvc_mount] == ["/data"]
    assert not label.pvc_mount
    for step in PIPELINE_STEPS:
        executor = kubernetes[f"exec-{step.replace('_', '-')}"]
        assert [s.secret_name for s in executor.image_pull_secret] == ["registry-creds"], step
        secrets = [(s.secret_name, [(k.secret_key, k.env_var) for k in s.key_to_env]) for s in executor.secret_as_env]
        wanted = [("mlflow-auth", [("token", "MLFLOW_TRACKING_TOKEN")])] if step in (
            "check_refresh", "evaluate_student", "register_models", "start_canary") else []
        assert secrets == wanted, step
    assert pipeline.labelling_loop().iterator_policy.parallelism_limit == 1  # 200k pairs: one CPU pod in the hour


def test_a_trainjob_teacher_step_mounts_the_shared_volume(cli, read_compiled, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"profile": "default", "teacher": {"distributed": {
        "launcher": "trainjob", "num_nodes": 2, "nproc_per_node": 8,
        "trainjob": {"shared_volume_claim": "teacher-scratch", "shared_mount_path": "/mnt/shared"}}}}))
    out = tmp_path / "pipeline.yaml"
    cli("pipeline", "compile", "--out", str(out), "-c", str(config))
    kubernetes = read_compiled(out).kubernetes
    mounts = [(m.constant or m.pvc_name_parameter.runtime_value.constant.string_value, m.mount_path)
              for m in kubernetes["exec-finetune-teacher"].pvc_mount]
    assert mounts == [("teacher-scratch", "/mnt/shared")]
    assert all(not executor.pvc_mount for name, executor in kubernetes.items() if name != "exec-finetune-teacher")


def test_a_deadline_the_quota_cannot_meet_fails_at_compile_time(tmp_path):
    from relevance.pipelines.training import compile_pipeline

    with pytest.raises(ValueError, match=r"it needs 70 devices; at most 50 allowed"):
        compile_pipeline(tmp_path / "p.yaml", profile="gpu", overrides={"cluster": {"labeling": {"max_devices": 50}}})
    assert not (tmp_path / "p.yaml").exists()


def test_a_local_run_keeps_this_machines_thread_count(read_compiled, tmp_path):
    """kfp.local ignores resources; a thread count from a pod's CPU limit would oversubscribe a laptop."""
    from kfp import compiler

    from relevance.pipelines.training import build_pipeline

    compiler.Compiler().compile(build_pipeline("default", local=True), package_path=str(tmp_path / "p.yaml"))
    pipeline = read_compiled(tmp_path / "p.yaml")
    assert all("RELEVANCE_THREADS" not in pipeline.env(step) for step in PIPELINE_STEPS)
    assert pipeline.resources("label_shard")["resourceCpuLimit"] == "4"  # still there for the uploaded YAML


@pytest.mark.parametrize("cluster, message", [
    ({"default": {"cpu_request": "-1"}}, r"cpu_request: expected a CPU quantity > 0 .* got '-1'"),
    ({"default": {"cpu_request": "0"}}, r"got '0'"),
    ({"default": {"memory_limit": "4GB"}}, r"memory_limit: expected a memory quantity .* got '4GB'"),
    ({"steps": {"label_shard": {"accelerator_type": "nvidia-h100", "accelerator_count": 1}}},
     r"nvidia\.com/gpu"),
    ({"steps": {"label_shard": {"accelerator_count": 2}}},
     r"expected accelerator_type and accelerator_count >= 1 together, got type None and count 2"),
    ({"steps": {"label_shard": {"cpu_request": "8", "cpu_limit": "4"}}},
     r"cpu_limit must be at least cpu_request \(8\), got 4"),
    ({"steps": {"label_shard": {"memory_request": "8Gi", "memory_limit": "4096Mi"}}},
     r"memory_limit must be at least memory_request \(8Gi\), got 4096Mi"),
    ({"steps": {"label_shards": {"retries": 2}}}, r"unknown step\(s\) \['label_shards'\]"),
    ({"steps": {"label_shard": {"retries": -1}}}, r"greater than or equal to 0"),
    ({"labeling": {"max_devices": 0}}, r"greater than or equal to 1"),
    ({"labeling": {"pairs_per_s_per_device": 0}}, r"greater than 0"),
    ({"labeling": {"shard_overhead_s": 700}}, r"max_shard_s \(600 s\) must exceed shard_overhead_s \(700 s\)"),
    ({"steps": {"label_shard": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}}},
     r"expected no value, got 'x'"),
    ({"data_volume": {"claim_name": "data", "steps": ["teacher"]}}, r"unknown step\(s\) \['teacher'\]"),
    ({"image_pull_secrets": ["Registry Creds"]}, r"got \['Registry Creds'\]"),
])
def test_cluster_settings_a_cluster_would_refuse_are_refused_early(cluster, message):
    with pytest.raises(ValidationError, match=message):
        build_config("default", {"cluster": cluster})


def test_numbers_from_yaml_are_quantities_and_steps_inherit_field_by_field():
    config = build_config("gpu", {"cluster": {"steps": {"label_shard": {"cpu_request": 4, "cpu_limit": 4}}}})
    shard = config.cluster.step("label_shard")
    assert (shard.cpu_request, shard.cpu_limit) == ("4", "4")
    assert shard.accelerator_type == "nvidia.com/gpu" and shard.memory_request == "48Gi"  # the profile's, kept
    assert config.cluster.step("build_pool").retries == 2  # from `default`
